"""Bundles libqllm.so.0 into the package when one is found, so the wheel works on its own:
$QLLM_LIB_DIR, then pkg-config's libdir for qllm (an installed qllm), then ../build (a build of
this checkout). QLLM_BUNDLE=0 builds a pure package that loads the system's libqllm.so.0."""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = os.path.dirname(os.path.abspath(__file__))


def find_library():
    if os.environ.get("QLLM_BUNDLE", "1") == "0":
        return None
    dirs = []
    if os.environ.get("QLLM_LIB_DIR"):
        dirs.append(os.environ["QLLM_LIB_DIR"])
    try:
        out = subprocess.run(["pkg-config", "--variable=libdir", "qllm"], capture_output=True, text=True, check=True)
        dirs.append(out.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    dirs.append(os.path.join(HERE, "..", "build"))
    for d in dirs:
        path = os.path.join(d, "libqllm.so.0")
        if d and os.path.exists(path):
            return os.path.realpath(path)
    if os.environ.get("QLLM_LIB_DIR"):
        raise SystemExit(f"qllm: no libqllm.so.0 in QLLM_LIB_DIR={os.environ['QLLM_LIB_DIR']}")
    return None


LIBRARY = find_library()


class build_py_with_library(build_py):
    def run(self):
        super().run()
        if LIBRARY:
            dst = os.path.join(self.build_lib, "qllm", "_lib")
            os.makedirs(dst, exist_ok=True)
            shutil.copyfile(LIBRARY, os.path.join(dst, "libqllm.so.0"))
            print(f"qllm: bundled {LIBRARY}")


class distribution(Distribution):
    def has_ext_modules(self):  # a bundled library makes the wheel platform-specific
        return LIBRARY is not None


setup(cmdclass={"build_py": build_py_with_library}, distclass=distribution)

#!/usr/bin/env python3
"""Enforces the arch-TU rule of lib/kernels/arch_exports.hpp on built static libraries.

usage: check_isa_objects.py ISA=LIB.a[:baseline] [...]

`:baseline` marks a library built with the architecture's baseline flags (neon: -march=armv8-a,
which every aarch64 CPU runs): weak symbols are allowed there, since every copy the linker
may pick is baseline code, as long as no library above the baseline defines them.

For each library compiled with ISA flags, fails when
  - a defined global symbol is not named <...>_<ISA> inside qllm::kernels (only kernels and
    tables are exported, so nothing else can be called from baseline code by mistake);
  - an exported function is named table_* (a table made by code, as a function-local static, runs
    that code at the first call, which comes before the CPU check), or an exported object is not
    a table_<ISA> in a read-only section (.rodata, .data.rel.ro: constant-initialized data);
  - a defined symbol is weak or unique (inline functions and template instances: the linker may
    keep this ISA's copy for every caller, which then runs on CPUs without the ISA), unless the
    library is marked baseline;
  - a table's `supported` field (the one function called before the CPU check) points at
    anything but the baseline predicate qllm::kernels::supported_<ISA> (defined elsewhere);
  - an object has static constructors or destructors (.init_array / .ctors / .preinit_array /
    .fini_array / .dtors), i.e. code of the TU that runs at load or exit whatever the CPU;
  - an object defines an IFUNC, local or not (its resolver runs at load time: target_clones).
readelf reads ELF objects of any architecture, so the same check runs on cross builds.
"""
import re
import subprocess
import sys

# Weak data that holds an address only (the C++ personality routine's pointer): no code of this
# TU runs through it.
ALLOWED_WEAK = re.compile(r"^DW\.ref\.__gxx_personality_v0$")
# code the loader or exit() runs whatever the CPU (constructors, destructors)
CTOR_SECTIONS = (".init_array", ".ctors", ".preinit_array", ".fini_array", ".dtors")


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def demangle(names):
    if not names:
        return []
    out = subprocess.run(["c++filt"], input="\n".join(names), check=True, capture_output=True,
                         text=True).stdout
    return out.splitlines()


def defined_where(lib, member, mangled):
    """Ndx of symbol `mangled` in archive member `member` ('UND' when defined elsewhere)."""
    cur = lib
    for line in run("readelf", "-sW", lib).splitlines():
        if line.startswith("File: "):
            cur = line[6:]
            continue
        f = line.split()
        if cur == member and len(f) >= 8 and f[7] == mangled:
            return f[6]
    return "?"


def check(isa, lib, baseline=False):
    problems = []
    exported = 0
    sections = {}  # (member, index) -> section name
    member = lib
    for line in run("readelf", "-SW", lib).splitlines():
        if line.startswith("File: "):
            member = line[6:]
        m = re.match(r"\s*\[\s*(\d+)\]\s+(\S+)", line)
        if m:
            sections[(member, m.group(1))] = m.group(2)
    member = lib
    raw = []
    ifuncs = []
    for line in run("readelf", "-sW", lib).splitlines():
        if line.startswith("File: "):
            member = line[6:]
            continue
        f = line.split()
        # Num: Value Size Type Bind Vis Ndx Name
        if len(f) < 8 or not f[0].endswith(":") or f[6] == "UND":
            continue
        if f[3] == "IFUNC":
            ifuncs.append((member, f[7]))
        if f[4] in ("GLOBAL", "WEAK", "UNIQUE"):
            raw.append((member, f[4], f[3], f[7], sections.get((member, f[6]), f[6]), f[1]))
    names = demangle([r[3] for r in raw])
    for m, name in ifuncs:
        problems.append(f"{m}: IFUNC {demangle([name])[0]} (its resolver runs at load time)")
    own = re.compile(r"^qllm::kernels::[a-z0-9_]+_" + re.escape(isa) + r"(\(|$)")
    table = re.compile(r"^qllm::kernels::table_" + re.escape(isa) + r"$")
    for (member, bind, typ, mangled, sec, _), name in zip(raw, names):
        if bind == "WEAK" and (ALLOWED_WEAK.match(mangled) or baseline):
            continue
        if bind != "GLOBAL":
            problems.append(f"{member}: {bind.lower()} {typ.lower()} {name}")
        elif not own.match(name):
            problems.append(f"{member}: exports {typ.lower()} {name} (not qllm::kernels::*_{isa})")
        elif typ == "FUNC" and name.startswith("qllm::kernels::table_"):
            problems.append(f"{member}: function {name} makes a table with code of this TU")
        elif typ != "FUNC" and not (table.match(name) and
                                    re.match(r"^\.(rodata|data\.rel\.ro)(\.|$)", sec)):
            problems.append(f"{member}: object {name} in {sec} is not a constant table_{isa}")
        else:
            exported += 1
    # relocations of each table's second field (offset 8: kernel_table::supported)
    tables = {(r[0], r[4]): int(v, 16) for r, n, v in
              zip(raw, names, [t[5] for t in raw]) if table.match(n)}
    member, relsec = lib, None
    found = set()
    for line in run("readelf", "-rW", lib).splitlines():
        if line.startswith("File: "):
            member = line[6:]
        m = re.match(r"Relocation section '\.rela?(\S+)'", line)
        if m:
            relsec = m.group(1)
            continue
        f = line.split()
        if (member, relsec) in tables and len(f) >= 5 and re.match(r"^[0-9a-f]+$", f[0]):
            if int(f[0], 16) == tables[(member, relsec)] + 8:
                found.add((member, relsec))
                target = demangle([f[4]])[0]
                if not target.startswith(f"qllm::kernels::supported_{isa}(") or \
                        "UND" not in defined_where(lib, member, f[4]):
                    problems.append(f"{member}: table_{isa}.supported points at {target}, not "
                                    f"the baseline qllm::kernels::supported_{isa}")
    for key in tables:
        if key not in found:
            problems.append(f"{key[0]}: table_{isa}.supported has no relocation (not a pointer "
                            f"to supported_{isa}?)")
    member = lib
    for line in run("readelf", "-SW", lib).splitlines():
        if line.startswith("File: "):
            member = line[6:]
        for sec in CTOR_SECTIONS:
            if re.search(r"\s" + re.escape(sec) + r"(\s|\.)", line):
                problems.append(f"{member}: has {sec} (code that runs at load or exit)")
    if exported == 0:
        problems.append("exports nothing: wrong library?")
    return problems


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    failed = False
    for arg in argv[1:]:
        isa, lib = arg.split("=", 1)
        baseline = lib.endswith(":baseline")
        if baseline:
            lib = lib[: -len(":baseline")]
        problems = check(isa, lib, baseline)
        status = "ok" if not problems else "FAILED"
        print(f"{isa:14} {lib}: {status}")
        for p in problems:
            print("    " + p)
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

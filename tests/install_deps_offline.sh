#!/bin/sh
# scripts/install-deps.sh --tests when the npm registry cannot be reached: it must finish (the
# other suites still run), say why in one warning, and serve_openai.sh must then skip (77) with
# that reason. Runs on a copy of the two scripts in a scratch tree whose Debian packages are the
# machine's (nothing is installed: every package is already there when the suites run) and
# whose nginx is a stand-in, so only npm is tried, against a closed loopback port.
#   install_deps_offline.sh SOURCE_ROOT
set -eu
src=$(readlink -f "$1")
command -v npm >/dev/null 2>&1 || { echo "npm is not installed: skipped"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/scripts" "$dir/tests/serve" "$dir/.cache/nginx/usr/sbin"
cp "$src/scripts/install-deps.sh" "$dir/scripts/"
cp "$src/tests/serve_openai.sh" "$dir/tests/"
cp "$src/tests/serve/package.json" "$src/tests/serve/package-lock.json" "$dir/tests/serve/"
printf '#!/bin/sh\n' >"$dir/.cache/nginx/usr/sbin/nginx"
chmod +x "$dir/.cache/nginx/usr/sbin/nginx"
# a closed port: refused at once, no retries, no cache to fall back on
npm_config_registry=http://127.0.0.1:9/ npm_config_fetch_retries=0 npm_config_cache="$dir/npm-cache" \
  npm_config_offline=false "$dir/scripts/install-deps.sh" --tests >"$dir/out" 2>&1 || {
  echo "install-deps.sh --tests failed when the npm registry was unreachable:"; cat "$dir/out"; exit 1; }
grep -q "warning: npm ci failed (npm .*ECONNREFUSED" "$dir/out" || { echo "no warning with the reason:"; cat "$dir/out"; exit 1; }
[ -f "$dir/.cache/npm-unavailable" ] || { echo "no .cache/npm-unavailable"; exit 1; }
rc=0
sh "$dir/tests/serve_openai.sh" /bin/false "$dir" >"$dir/skip" 2>&1 || rc=$?
[ "$rc" = 77 ] || { echo "serve_openai.sh without the npm package: exit $rc, not 77 (skipped)"; cat "$dir/skip"; exit 1; }
grep -q "npm ci failed (npm .*ECONNREFUSED.*skipped" "$dir/skip" || { echo "the skip does not say why:"; cat "$dir/skip"; exit 1; }
echo "install-deps.sh with the npm registry unreachable: $(grep warning "$dir/out")"
echo "serve_openai.sh then: $(cat "$dir/skip")"

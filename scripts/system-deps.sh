#!/usr/bin/env bash
# The programs the test suite starts itself, installed from Debian where missing (run by `make test` and .ci/run):
#   redis-server (online feature store), PostgreSQL (team MLflow backend, shared review decisions),
#   Chromium + ChromeDriver (the HTML report's plots render headless).
# Where it cannot install (not root and no password-less sudo, no apt-get, or apt fails) it prints one line with
# the command to run and exits 0: the tests that need a missing program then fail or skip, naming it.
# Bash builtins only (no `id`, `ls`), so it behaves the same whatever PATH holds.
set -uo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
pg=(/usr/lib/postgresql/*/bin/initdb)
{ command -v initdb >/dev/null 2>&1 || [ -x "${pg[0]}" ]; } || need+=(postgresql)
{ command -v chromium || command -v chromium-browser || command -v google-chrome; } >/dev/null 2>&1 \
  || need+=(chromium chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0

cmd="apt-get install -y ${need[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: missing ${need[*]} and no apt-get here; install them with your package manager (Debian: sudo $cmd); the tests that need them will fail or skip"
  exit 0
fi
if [ "${EUID:-$UID}" -eq 0 ]; then
  as=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
  as=(sudo -n --preserve-env=DEBIAN_FRONTEND)
else
  echo "system-deps: missing ${need[*]}; install them with: sudo $cmd; the tests that need them will fail or skip"
  exit 0
fi
echo "system-deps: installing from Debian: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! { "${as[@]}" apt-get update -qq && "${as[@]}" apt-get install -y -qq "${need[@]}"; } \
    >/dev/null 2>&1; then
  echo "system-deps: could not install ${need[*]} (apt-get failed); run: sudo apt-get update && sudo $cmd; the tests that need them will fail or skip"
fi
exit 0

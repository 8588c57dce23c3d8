#!/usr/bin/env bash
# One command from a fresh clone to a passing test suite: installs the dependencies, builds,
# and runs every test (GPU tests skip themselves where no GPU is present).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/launch/setup.sh"
"$root/launch/build.sh" "$@"
ctest --test-dir "$root/build" --output-on-failure -j "$(nproc)"

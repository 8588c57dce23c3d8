#!/usr/bin/env bash
# Run once on the CPU machine, from the project root, before the first GPU call: fills
# .device-deps/ (git-ignored) with the Debian packages the GPU machine lacks and the build
# needs there (abseil, ICU for the tokenizer's pre-tokenizer regexes, nlohmann-json for
# trainer/json.cc; header-only, its CMake package lands in /usr/share/cmake). Carry .device-deps
# with every GPU call; bench/device_run.sh unpacks them.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
mkdir -p "$root/.device-deps"
grep -qxF '/.device-deps/' "$root/.git/info/exclude" 2>/dev/null ||
  echo '/.device-deps/' >>"$root/.git/info/exclude"
cd "$root/.device-deps"
packages=(libabsl-dev libabsl20220623 libicu-dev libicu72 nlohmann-json3-dev)
missing=()
for p in "${packages[@]}"; do ls "${p}"_*.deb >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get download "${missing[@]}" 2>&1 | grep -v '^W:' || true
fi
ls -la "$root/.device-deps"

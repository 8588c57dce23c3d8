#!/usr/bin/env bash
# Installs what switchyard builds against on Debian/Ubuntu (skips what is already there).
# CUDA is optional: when nvcc is on PATH the CUDA backend is built too.
set -euo pipefail
packages=(build-essential cmake ninja-build pkg-config
          libprotobuf-dev protobuf-compiler libabsl-dev
          libopenmpi-dev openmpi-bin libgtest-dev libopenblas-dev libicu-dev nlohmann-json3-dev
          python3-pip)  # python3-pip: launch/test.sh installs tensorboard with it
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

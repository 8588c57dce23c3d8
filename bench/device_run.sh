#!/usr/bin/env bash
# One call on the GPU machine: build switchyard with CUDA, run every GPU test, then train the
# default tiny config on the GPU and on the CPU there, writing logs and a summary to $OUT
# (or ./device-out when run by hand).
#
#   bench/device_run.sh            # from the project root on the GPU machine
#
# The device recipe (../shared/device/README.md): the abseil packages travel in .device-deps/.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/device-out}
mkdir -p "$out"
cd "$root"
if ls .device-deps/*.deb >/dev/null 2>&1; then
  for f in .device-deps/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
summary="$out/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$summary"
start=$(date +%s)
cmake -S . -B build-dev -G Ninja -DCMAKE_BUILD_TYPE=Release >"$out/build.log" 2>&1 &&
  cmake --build build-dev -j "$(nproc)" >>"$out/build.log" 2>&1
note "build: exit $? in $(( $(date +%s) - start )) s"

ctest --test-dir build-dev -L gpu --output-on-failure >"$out/gpu_tests.log" 2>&1
note "gpu tests: exit $? ($(grep -E 'tests passed|tests failed' "$out/gpu_tests.log"))"
ctest --test-dir build-dev -L 'unit|mpi' -j 8 >"$out/cpu_tests.log" 2>&1
note "unit+mpi tests: exit $? ($(grep -E 'tests passed|tests failed' "$out/cpu_tests.log"))"

for device in DEVICE_CUDA DEVICE_CPU; do
  start=$(date +%s.%N)
  build-dev/switchyard train --config configs/tiny.textproto --run_dir "/tmp/tiny-$device" \
    --set "device: $device" >"$out/tiny_$device.log" 2>&1
  rc=$?
  secs=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")
  note "tiny default run on $device: exit $rc in ${secs} s; $(grep '^eval' "$out/tiny_$device.log" | tail -1)"
  note "  $(grep -E '^step 4000' "$out/tiny_$device.log")"
done

# Baseline throughput of the whole training step on the benchmark model (f32 path today):
# 6 steps, the first one warms up allocator pools and cuBLASLt's algorithm cache.
build-dev/switchyard train --config configs/bench_moe_1b.textproto --run_dir /tmp/bench \
  --set 'train { steps: 6 log_interval: 1 } schedule { warmup_steps: 1 } data { arithmetic { eval_examples: 4 } } checkpoint { interval: 0 }' \
  >"$out/bench_moe_1b.log" 2>&1
note "bench_moe_1b (f32): exit $?"
grep -E '^(model|step)' "$out/bench_moe_1b.log" | tee -a "$summary"

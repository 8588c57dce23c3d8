#!/usr/bin/env bash
# One call on the GPU machine: build switchyard with CUDA, then run the stages asked for
# (all by default), writing logs and a summary to $OUT (or ./device-out when run by hand).
#
#   bench/device_run.sh                      # every stage
#   bench/device_run.sh gpu bench            # build, then only these stages
#
# Stages:
#   gpu    ctest -L gpu (every CUDA op and the whole model against the CPU)
#   cpu    ctest -L 'unit|mpi' (the CPU suites on this machine's 16 cores)
#   tiny   the default run (configs/tiny.textproto: DEVICE_AUTO, so the GPU in bf16)
#   attn   attention: the SIMT kernels' parity test too, bench/attention_bench (TFLOP/s of
#          the tensor-core, SIMT and cuDNN paths) and bench/sdpa_bench.py (PyTorch SDPA, same
#          shapes)
#   gemm   bench/expert_gemm_bench: the MoE expert GEMMs per expert on one stream, on four
#          streams, and as one cuBLAS grouped-batched call (TFLOP/s and host issue time)
#   sampling tests/gpu/sampling_gpu_test (the CUDA sampler against the CPU's) and
#          bench/sampling_bench (ms per call and GB/s of logits: rows x vocab x greedy, T=1,
#          top-p, top-k + top-p + min-p)
#   bench  configs/bench_moe_1b.textproto on uniform random tokens (as the PyTorch side):
#          tokens/s, TFLOP/s, MFU and the per-region profile of one step
#          (train.profile_step), without and with one MTP module (BENCH_MTP="0": MTP off
#          only; the config's figures are with attention's backward free to use atomics, as
#          PyTorch's, and BENCH_DET_MTP (default "0") repeats them with deterministic: true;
#          BENCH_AB / BENCH_AB_ENV: one more MTP-off run with those settings, or one per
#          ';'-separated BENCH_AB_ENV entry, e.g. "SWITCHYARD_ATTENTION=tc;SWITCHYARD_EXPERT_GEMMS=batched")
#   trace  the same run (MTP off, no profiled step) under bench/cupti_trace.cc, summarised by
#          bench/trace_report.py: GPU busy and idle time per step, idle time by cause, the
#          largest gaps, GPU time per kernel (the trace itself comes back as trace.csv.gz)
#   nccl   the NCCL backend against MPI (tests/mpi/nccl_collectives_test), training on 2 GPUs
#          against one (tests/mpi/nccl_train_equivalence_test: DP=2 and EP=2 in f32, EP=2 in
#          bf16, ZeRO-1, resume), both skipped without a GPU per rank, and the default run on
#          2 GPUs with mpirun (EP=2): run on the 2-GPU machine
#   oracle bench/oracle.py against dump-step on the GPU (bf16 and f32; two configs)
#   torch  bench/torch_bench.py (PyTorch, same model and shape) and bench/compare.py's table
#   rollout bench/rollout_bench (the rollout engine on the benchmark model, random weights,
#          64 prompts x 128 tokens, 256 new tokens, bf16; ROLLOUT_ARGS: more flags) and
#          bench/hf_generate_bench.py (transformers' generate, same shapes) side by side;
#          ROLLOUT_TRACE=1: the bench once more under the CUPTI trace, summarised per decode step
#
# The device recipe (../shared/device/README.md): the abseil packages travel in .device-deps/.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/device-out}
mkdir -p "$out"
cd "$root"
stages=${*:-gpu cpu nccl tiny attn gemm sampling bench trace oracle torch rollout}
want() { [[ " $stages " == *" $1 "* ]]; }
if ls .device-deps/*.deb >/dev/null 2>&1; then
  for f in .device-deps/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
summary="$out/summary.txt"
: >"$summary"
t_start=$(date +%s)
note() { echo "[$(( $(date +%s) - t_start )) s] $*" | tee -a "$summary"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$summary"
start=$(date +%s)
# DEVICE_KEEP_GOING=1: build every target that compiles and run the stages anyway (a test
# whose binary failed to build then fails as "not run"), for a tree mid-change.
# DEVICE_TARGETS="a b ...": build only these targets (a short call; the stages need theirs).
keep=()
[ "${DEVICE_KEEP_GOING:-0}" = 1 ] && keep=(-- -k 0)
cmake -S . -B build-dev -G Ninja -DCMAKE_BUILD_TYPE=Release >"$out/build.log" 2>&1 &&
  cmake --build build-dev -j "$(nproc)" ${DEVICE_TARGETS:+--target $DEVICE_TARGETS} "${keep[@]}" >>"$out/build.log" 2>&1
rc=$?
note "build: exit $rc in $(( $(date +%s) - start )) s"
if [ $rc -ne 0 ]; then
  grep -E 'error|FAILED' "$out/build.log" | head -40 | tee -a "$summary"
  [ "${DEVICE_KEEP_GOING:-0}" = 1 ] || exit 1
fi

if want gpu; then
  ctest --test-dir build-dev -L gpu --output-on-failure >"$out/gpu_tests.log" 2>&1
  note "gpu tests: exit $? ($(grep -E 'tests passed|tests failed' "$out/gpu_tests.log"))"
  grep -E '^\s*[0-9]+/[0-9]+ Test.*(Failed|Exception|Timeout)' "$out/gpu_tests.log" | tee -a "$summary"
  # The GEMMs again with cuBLASLt planning no workspace (the algorithms that knob picks).
  SWITCHYARD_GEMM_WORKSPACE_MB=0 build-dev/matmul_gpu_test >"$out/matmul_no_workspace.log" 2>&1
  note "matmul test with SWITCHYARD_GEMM_WORKSPACE_MB=0: exit $? ($(grep -E '^\[  (PASSED|FAILED)' "$out/matmul_no_workspace.log" | head -2 | tr '\n' ' '))"
fi
if want cpu; then
  ctest --test-dir build-dev -L 'unit|mpi' -j 8 >"$out/cpu_tests.log" 2>&1
  note "unit+mpi tests: exit $? ($(grep -E 'tests passed|tests failed' "$out/cpu_tests.log"))"
fi

if want nccl; then
  # -V: gtest's own lines in the log, so that a skipped GPU test shows as skipped.
  ctest --test-dir build-dev -R nccl -V >"$out/nccl.log" 2>&1
  note "nccl tests: exit $? ($(grep -E 'tests passed|tests failed' "$out/nccl.log"); gtest: $(grep -cE '\[       OK \]' "$out/nccl.log") OK, $(grep -cE '\[  SKIPPED \] .*ms\)$' "$out/nccl.log") skipped)"
  grep -E '\[  (SKIPPED|FAILED) *\] .*ms\)$|Test +#[0-9]+: .*(Failed|Exception|Timeout)' "$out/nccl.log" |
    tee -a "$summary"
  # The binary as a user starts it: one rank per GPU, the experts split over the two, the
  # default run's 64 sequences per step split over the ranks (compare with the tiny stage).
  start=$(date +%s)
  mpirun -np 2 --bind-to none build-dev/switchyard train --config configs/tiny.textproto \
    --run_dir /tmp/tiny-2gpu --set 'device: DEVICE_CUDA parallel { expert_parallel_size: 2 } train { micro_batch: 32 }' \
    >"$out/nccl_tiny.log" 2>&1
  note "tiny on 2 GPUs (EP=2): exit $? in $(( $(date +%s) - start )) s; $(grep -E '^eval' "$out/nccl_tiny.log" | tail -1)"
  grep -E '^rank [0-9]/|^model|^step 4000/|error' "$out/nccl_tiny.log" | tee -a "$summary"
fi

if want attn; then
  SWITCHYARD_ATTENTION=simt build-dev/attention_gpu_test >"$out/attention_simt.log" 2>&1
  note "attention test on the SIMT path: exit $? ($(grep -E '^\[  (PASSED|FAILED)' "$out/attention_simt.log" | head -2 | tr '\n' ' '))"
  build-dev/attention_bench >"$out/attention_bench.log" 2>&1
  note "attention_bench: exit $?"
  tee -a "$summary" <"$out/attention_bench.log"
  python3 bench/sdpa_bench.py >"$out/sdpa_bench.log" 2>&1  # PyTorch SDPA, same shapes
  note "sdpa_bench: exit $?"
  tee -a "$summary" <"$out/sdpa_bench.log"
fi

if want gemm; then
  build-dev/expert_gemm_bench >"$out/expert_gemm_bench.log" 2>&1
  note "expert_gemm_bench: exit $?"
  tee -a "$summary" <"$out/expert_gemm_bench.log"
fi

if want sampling; then
  build-dev/sampling_gpu_test >"$out/sampling_gpu_test.log" 2>&1
  note "sampling gpu test: exit $? ($(grep -E '^\[  (PASSED|FAILED)' "$out/sampling_gpu_test.log" | head -2 | tr '\n' ' '))"
  grep -E '^\[  FAILED' "$out/sampling_gpu_test.log" | head -20 | tee -a "$summary"
  build-dev/sampling_bench >"$out/sampling_bench.log" 2>&1
  note "sampling_bench: exit $?"
  tee -a "$summary" <"$out/sampling_bench.log"
fi

if want tiny; then
  start=$(date +%s.%N)
  build-dev/switchyard train --config configs/tiny.textproto --run_dir /tmp/tiny \
    >"$out/tiny.log" 2>&1
  rc=$?
  secs=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")
  note "tiny default run: exit $rc in ${secs} s; $(grep '^eval' "$out/tiny.log" | tail -1)"
  note "  $(grep -E '^model' "$out/tiny.log" | grep -oE 'device [^|]*')"
  note "  $(grep -E '^step 4000' "$out/tiny.log")"
fi

# The benchmark's data and train settings. The PyTorch side trains on uniform random tokens;
# so does this, from an llm.c-layout shard (the arithmetic task's few distinct tokens would
# skew the routing and the expert GEMMs). 12 steps: the first warms allocator pools and
# cuBLASLt's algorithm cache; compare.py takes the median of steps 3-12 but the profiled
# step 6 and the one after it. bench_run's arguments: more train settings.
bench_run() { echo "train { steps: 12 log_interval: 1 $* } schedule { warmup_steps: 1 } data { source: DATA_SHARDS train_shards: \"/tmp/random_tokens.bin\" } checkpoint { interval: 0 }"; }
if want bench || want trace; then
  python3 - <<'PY'
import random, struct
random.seed(0)
tokens = [random.randrange(32768) for _ in range(8 * 2049 * 16)]
with open("/tmp/random_tokens.bin", "wb") as f:
    f.write(struct.pack("<256i", 20240520, 1, len(tokens), *([0] * 253)))
    f.write(struct.pack("<%dH" % len(tokens), *tokens))
PY
fi

if want bench; then
  for mtp in ${BENCH_MTP:-0 1}; do
    build-dev/switchyard train --config configs/bench_moe_1b.textproto --run_dir "/tmp/bench$mtp" \
      --set "mtp { num_modules: $mtp } $(bench_run profile_step: 6)" >"$out/bench_moe_1b_mtp$mtp.log" 2>&1
    note "bench_moe_1b MTP $mtp (random tokens): exit $?"
    grep -E '^(model|step ([5-9]|1[0-2])/|peak)' "$out/bench_moe_1b_mtp$mtp.log" | tee -a "$summary"
    if [ "$mtp" = 0 ]; then sed -n '/^profile of step/,/^peak memory/p' "$out/bench_moe_1b_mtp$mtp.log" | tee -a "$summary"; fi
  done
  # The config lets attention's backward use atomics, as PyTorch's SDPA does; the same figures
  # bit-reproducible (deterministic: true, every other config's default), for BENCH_DET_MTP
  # (default: MTP off only; "" for none).
  for mtp in ${BENCH_DET_MTP-0}; do
    build-dev/switchyard train --config configs/bench_moe_1b.textproto --run_dir "/tmp/bench_det$mtp" \
      --set "deterministic: true mtp { num_modules: $mtp } $(bench_run profile_step: 6)" \
      >"$out/bench_moe_1b_det_mtp$mtp.log" 2>&1
    note "bench_moe_1b MTP $mtp, deterministic: true: exit $?"
    grep -E '^step ([3-9]|1[0-2])/' "$out/bench_moe_1b_det_mtp$mtp.log" | tee -a "$summary"
  done
  # An A/B of the step with other settings, when asked (BENCH_AB: a --set string, e.g. for
  # the optimizer; BENCH_AB_ENV: environment, e.g. SWITCHYARD_ATTENTION=tc).
  if [ -n "${BENCH_AB:-}${BENCH_AB_ENV:-}" ]; then
    IFS=';' read -r -a ab_envs <<<"${BENCH_AB_ENV:-}"
    [ ${#ab_envs[@]} -gt 0 ] || ab_envs=("")
    for i in "${!ab_envs[@]}"; do
      env ${ab_envs[$i]} build-dev/switchyard train --config configs/bench_moe_1b.textproto \
        --run_dir /tmp/bench_ab$i --set "mtp { num_modules: 0 } $(bench_run profile_step: 6) ${BENCH_AB:-}" \
        >"$out/bench_moe_1b_ab$i.log" 2>&1
      note "bench_moe_1b MTP 0 with '${ab_envs[$i]}' '${BENCH_AB:-}': exit $?"
      grep -E '^step ([3-9]|1[0-2])/|^peak|^(attn|moe|head|optimizer)|error' "$out/bench_moe_1b_ab$i.log" | tee -a "$summary"
    done
  fi
  nvidia-smi --query-gpu=memory.used --format=csv >>"$summary"
fi

if want trace; then
  if [ -f build-dev/libsy_cupti_trace.so ]; then
    SY_TRACE_OUT=/tmp/trace.csv CUDA_INJECTION64_PATH="$root/build-dev/libsy_cupti_trace.so" \
      build-dev/switchyard train --config configs/bench_moe_1b.textproto --run_dir /tmp/bench_trace \
      --set "mtp { num_modules: 0 } $(bench_run)" >"$out/bench_trace.log" 2>&1
    note "bench_moe_1b MTP 0 under the CUPTI trace: exit $?"
    grep -E '^step ([5-9]|1[0-2])/|cupti_trace' "$out/bench_trace.log" | tee -a "$summary"
    python3 bench/trace_report.py /tmp/trace.csv >"$out/trace_report.txt" 2>&1
    note "trace_report: exit $?"
    tee -a "$summary" <"$out/trace_report.txt"
    gzip -c /tmp/trace.csv >"$out/trace.csv.gz"
  else
    note "trace: no build-dev/libsy_cupti_trace.so (the toolkit has no CUPTI)"
  fi
fi

if want rollout; then
  # The rollout engine on the benchmark model against transformers' generate on the same shapes
  # (64 prompts x 128 tokens, 256 new tokens, temperature 1, bf16), in the same call.
  build-dev/rollout_bench ${ROLLOUT_ARGS:-} >"$out/rollout_bench.log" 2>&1
  note "rollout_bench: exit $?"
  grep -vE '^\{' "$out/rollout_bench.log" | tail -5 | tee -a "$summary"
  # The candidates not yet the default: the vector decode-attention kernel and the adaptive
  # grouped-GEMM tiling (kernels/kv_cache.h, kernels/grouped_matmul.h).
  SWITCHYARD_DECODE_ATTENTION=vector SWITCHYARD_GROUPED_MATMUL=auto build-dev/rollout_bench \
    ${ROLLOUT_ARGS:-} >"$out/rollout_bench_candidates.log" 2>&1
  note "rollout_bench with SWITCHYARD_DECODE_ATTENTION=vector SWITCHYARD_GROUPED_MATMUL=auto: exit $?"
  grep -vE '^\{' "$out/rollout_bench_candidates.log" | tail -5 | head -2 | tee -a "$summary"
  # The A/B: decode steps issued op by op instead of replayed as captured CUDA graphs.
  SWITCHYARD_DECODE_GRAPHS=0 build-dev/rollout_bench ${ROLLOUT_ARGS:-} \
    >"$out/rollout_bench_nographs.log" 2>&1
  note "rollout_bench with SWITCHYARD_DECODE_GRAPHS=0: exit $?"
  grep -vE '^\{' "$out/rollout_bench_nographs.log" | tail -4 | head -2 | tee -a "$summary"
  # The A/B: the MoE layers' experts as before the grouped device-offset GEMMs (a host wait
  # for the expert counts in every layer).
  SWITCHYARD_INFERENCE_EXPERTS=host build-dev/rollout_bench ${ROLLOUT_ARGS:-} \
    >"$out/rollout_bench_host.log" 2>&1
  note "rollout_bench with SWITCHYARD_INFERENCE_EXPERTS=host: exit $?"
  grep -vE '^\{' "$out/rollout_bench_host.log" | tail -2 | tee -a "$summary"
  if [ -n "${ROLLOUT_TRACE:-}" ] && [ -f build-dev/libsy_cupti_trace.so ]; then
    # The same run under the CUPTI trace: a "step" is one decode step (one row-state update).
    SY_TRACE_OUT=/tmp/rollout_trace.csv CUDA_INJECTION64_PATH="$root/build-dev/libsy_cupti_trace.so" \
      build-dev/rollout_bench ${ROLLOUT_ARGS:-} >"$out/rollout_trace_bench.log" 2>&1
    note "rollout_bench under the CUPTI trace: exit $?"
    python3 bench/trace_report.py /tmp/rollout_trace.csv --skip 20 \
      --step-kernel advance_rollout_rows_kernel >"$out/rollout_trace_report.txt" 2>&1
    note "rollout trace_report: exit $?"
    sed -n '/^median step/,$p' "$out/rollout_trace_report.txt" | head -60 | tee -a "$summary"
  fi
  python3 bench/hf_generate_bench.py >"$out/hf_generate.log" 2>&1
  note "hf_generate_bench: exit $?"
  tail -1 "$out/hf_generate.log" | tee -a "$summary"
  python3 - "$out/rollout_bench.log" "$out/hf_generate.log" <<'PY' 2>&1 | tee -a "$summary"
import json, sys
def last_json(path):
    lines = [l for l in open(path) if l.startswith("{")]
    return json.loads(lines[-1]) if lines else None
ours, theirs = last_json(sys.argv[1]), last_json(sys.argv[2])
if ours and theirs:
    print("rollout: switchyard %.0f new tokens/s, transformers generate %.0f: %.1fx; %.1f%% of the bandwidth bound"
          % (ours["new_tokens_per_s"], theirs["new_tokens_per_s"],
             ours["new_tokens_per_s"] / theirs["new_tokens_per_s"], 100 * ours["bandwidth_bound_fraction"]))
PY
fi

if want oracle; then
  for cfg in configs/tiny.textproto bench/oracle_moe.textproto; do
    for prec in PRECISION_BF16 PRECISION_F32; do
      name=$(basename "$cfg" .textproto)_$prec
      steps=0; [ "$cfg" = bench/oracle_moe.textproto ] && steps=3  # a trained routing bias
      python3 bench/oracle.py --switchyard build-dev/switchyard --config "$cfg" --train_steps $steps \
        --set "device: DEVICE_CUDA precision: $prec" >"$out/oracle_$name.log" 2>&1
      note "oracle $name: exit $? ($(grep -cE 'FAIL' "$out/oracle_$name.log") FAIL lines)"
    done
  done
fi

if want torch; then
  for mtp in ${TORCH_MTP:-0 1}; do  # TORCH_MTP=0: the MTP-off figure only (a shorter call)
    python3 bench/torch_bench.py --config configs/bench_moe_1b.textproto --mtp $mtp \
      >"$out/torch_mtp$mtp.log" 2>&1
    note "torch_bench MTP $mtp: exit $?"
    tail -2 "$out/torch_mtp$mtp.log" | tee -a "$summary"
  done
  # The figures this call ran on both sides (BENCH_MTP and TORCH_MTP may leave some out).
  sy_logs=() torch_logs=()
  for mtp in ${TORCH_MTP:-0 1}; do
    torch_logs+=("$out/torch_mtp$mtp.log")
    [ -f "$out/bench_moe_1b_mtp$mtp.log" ] && sy_logs+=("$out/bench_moe_1b_mtp$mtp.log")
  done
  if [ ${#sy_logs[@]} -gt 0 ]; then
    python3 bench/compare.py --switchyard "${sy_logs[@]}" --torch "${torch_logs[@]}" 2>&1 |
      tee -a "$summary"
    det_logs=() det_torch=()
    for mtp in ${TORCH_MTP:-0 1}; do
      if [ -f "$out/bench_moe_1b_det_mtp$mtp.log" ]; then
        det_logs+=("$out/bench_moe_1b_det_mtp$mtp.log") det_torch+=("$out/torch_mtp$mtp.log")
      fi
    done
    if [ ${#det_logs[@]} -gt 0 ]; then
      echo "switchyard with deterministic: true (bit-identical runs):" | tee -a "$summary"
      python3 bench/compare.py --switchyard "${det_logs[@]}" --torch "${det_torch[@]}" 2>&1 |
        tee -a "$summary"
    fi
  else
    note "compare: no switchyard bench log for MTP ${TORCH_MTP:-0 1} in this call (add the bench stage)"
  fi
fi

# Everything but the summary in one archive (the device tool brings back a few files only).
tar -czf /tmp/device_logs.tar.gz -C "$out" --exclude=summary.txt . &&
  find "$out" -type f ! -name summary.txt -delete && mv /tmp/device_logs.tar.gz "$out/logs.tar.gz"

#!/usr/bin/env bash
# launch/slurm.sbatch under a real Slurm (one host: launch/slurm_local.sh), on the CPU:
#   1. a 2-task job through srun --mpi=pmix trains; ranks come from Slurm's environment;
#      the log is in logs/<job name>-<job id>.out and the run in runs/<job name>, both under
#      the directory sbatch was called from, as the template says;
#   2. a job preempted twice, once by `scontrol requeue` (SIGTERM to every task) and once by
#      the time-limit warning that --signal=B:USR1 sends to the batch shell (here sent by
#      `scancel --batch --signal=USR1`), checkpoints each time, is requeued, resumes, and
#      ends with a checkpoint bit-identical to the uninterrupted job's;
#   3. `scancel` ends a job: it checkpoints, is not requeued, and leaves no process behind.
#
#   tests/slurm/slurm_sbatch_test.sh BUILD_DIR
#
# Exits 77 (ctest: skipped) with the reason when Slurm is not installed or its daemons cannot
# run here; set SY_SLURM_REQUIRED=1 to make that a failure instead.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:?usage: $0 BUILD_DIR}" && pwd)
required=${SY_SLURM_REQUIRED:-0}

skip() {
  if [ "$required" = 1 ]; then
    echo "FAIL (SY_SLURM_REQUIRED=1): $*" >&2
    exit 1
  fi
  echo "SKIP: $*"
  exit 77
}
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

for cmd in sbatch srun scontrol scancel squeue slurmctld slurmd munged python3; do
  command -v "$cmd" >/dev/null || skip "$cmd not found (install Slurm: launch/slurm_local.sh install)"
done
[ -x "$build/switchyard" ] || fail "no $build/switchyard: build it first"

work=$(mktemp -d "${TMPDIR:-/tmp}/sy-slurm-test.XXXXXX")
submit="$work/submit"
mkdir -p "$submit/logs"
ln -s "$build" "$submit/build"  # the template runs $SLURM_SUBMIT_DIR/build/switchyard
binary="$submit/build/switchyard"

cleanup() {
  local rc=$?
  if [ -n "${SLURM_CONF:-}" ]; then
    scancel --quiet --full --signal=KILL -u "$(id -un)" 2>/dev/null || true
    # Daemons and any task of ours: wait for the tasks before stopping slurmd.
    for _ in $(seq 50); do pgrep -f "$binary" >/dev/null || break; sleep 0.1; done
  fi
  "$root/launch/slurm_local.sh" stop "$work/slurm" || true
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then
    for f in "$submit"/logs/*.out "$work"/slurm/log/slurmctld.log "$work"/slurm/log/slurmd.log; do
      [ -e "$f" ] || continue
      echo "--- $f (last 40 lines)" >&2
      tail -n 40 "$f" >&2
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

started=$("$root/launch/slurm_local.sh" start "$work/slurm" 2>"$work/start.err") ||
  skip "the local Slurm did not start: $(tail -n 5 "$work/start.err" | tr '\n' ' ')"
eval "$started"
srun --mpi=list 2>&1 | grep -qw pmix || skip "this Slurm has no PMIx plugin (srun --mpi=list)"
echo "slurm: up ($SLURM_CONF)"

# The tiny config, short: 300 steps of the global batch of 64 over 2 ranks, no evaluation
# until the end, checkpoints only when stopped and at the end.
config="$root/configs/tiny.textproto"
train_set='device: DEVICE_CPU train { steps: 300 micro_batch: 32 log_interval: 20 eval_interval: 0 cpu_threads: 1 } data { arithmetic { eval_examples: 16 } } checkpoint { interval: 0 }'
# The template asks for 2 nodes x 8 GPUs; one CPU host takes 1 node x 2 tasks and no GPU.
sbatch_flags=(--parsable --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --gpus-per-task=0
              --mem=0 --time=10)

job_state() { scontrol show job "$1" -o 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
restarts() {
  local n
  n=$(scontrol show job "$1" -o 2>/dev/null | grep -o 'Restarts=[0-9]*' | cut -d= -f2)
  echo "${n:-0}"
}

# Waits (at most $3 s) until file $1 has a line matching $2.
wait_for_line() {
  local file=$1 pattern=$2 limit=$3
  for _ in $(seq $((limit * 10))); do
    grep -qE "$pattern" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "no line matching '$pattern' in $file within $limit s"
}
# Waits (at most $3 s) until job $1 is in state $2.
wait_for_state() {
  local job=$1 want=$2 limit=$3 state=""
  for _ in $(seq $((limit * 10))); do
    state=$(job_state "$job")
    [ "$state" = "$want" ] && return 0
    sleep 0.1
  done
  fail "job $job is $state, not $want, after $limit s"
}
# A requeued job is held back (BeginTime) for a while; let it start at once.
release() {
  local job=$1
  for _ in $(seq 300); do
    [ "$(job_state "$job")" = PENDING ] && [ "$(restarts "$job")" -ge "$2" ] && break
    sleep 0.1
  done
  [ "$(job_state "$job")" = PENDING ] || fail "job $job was not requeued (state $(job_state "$job"))"
  # slurmd refuses a launch whose credential is from the second in which it revoked the old
  # one ("Job credential revoked"): let that second pass first.
  sleep 2
  scontrol update jobid="$job" StartTime=now
}

cd "$submit"
t0=$SECONDS

# --- 1. an uninterrupted job ---------------------------------------------------------------------
ref=$(sbatch "${sbatch_flags[@]}" --job-name=ref "$root/launch/slurm.sbatch" "$config" --set "$train_set")
wait_for_state "$ref" COMPLETED 90
ref_log="logs/ref-$ref.out"
[ -f "$ref_log" ] || fail "no $ref_log (the template's --output=logs/%x-%j.out)"
grep -q "^rank 0/2 | local 0 " "$ref_log" || fail "rank 0 of 2 did not start: $(head -n 5 "$ref_log")"
grep -q "^rank 1/2 | local 1 " "$ref_log" || fail "rank 1 of 2 did not start"
grep -q "grid: world 2 = data 2 x expert 1" "$ref_log" || fail "the ranks did not form one world of 2"
grep -q "^step 300/300 " "$ref_log" || fail "the job did not reach step 300"
[ -e runs/ref/checkpoints/step_00000300/model.safetensors ] ||
  fail "no runs/ref/checkpoints/step_00000300 under the submit directory"
echo "ok: 2-task job through srun --mpi=pmix, log in $ref_log, run in runs/ref ($((SECONDS - t0)) s)"

# --- 2. preempted twice, resumed bit-exactly -----------------------------------------------------
pre=$(sbatch "${sbatch_flags[@]}" --job-name=pre "$root/launch/slurm.sbatch" "$config" --set "$train_set")
pre_log="logs/pre-$pre.out"
wait_for_line "$pre_log" "^step 40/300 " 60
scontrol requeue "$pre"  # as a preemption does: SIGTERM to every task, then back to the queue
wait_for_line "$pre_log" "stop requested by signal: checkpoint written at step" 40
release "$pre" 1
wait_for_line "$pre_log" "^resumed from .*runs/pre/checkpoints/step_" 60
grep -q "switchyard: job $pre (restart 1)" "$pre_log" || fail "the requeued job did not say restart 1"
first_stop=$(grep -o "checkpoint written at step [0-9]*" "$pre_log" | head -n 1 | grep -o "[0-9]*$")
wait_for_line "$pre_log" "^step 140/300 " 60
# The time-limit warning: SIGUSR1 to the batch shell, whose trap passes it to srun's tasks
# and then requeues the job itself.
scancel --batch --signal=USR1 "$pre"
wait_for_line "$pre_log" "switchyard: requeueing job $pre" 40
release "$pre" 2
wait_for_state "$pre" COMPLETED 90
grep -q "switchyard: job $pre (restart 2)" "$pre_log" || fail "the job did not restart a second time"
[ "$(grep -c "stop requested by signal: checkpoint written" "$pre_log")" -eq 2 ] ||
  fail "expected two checkpoints on signals in $pre_log"
for f in runs/ref/checkpoints/step_00000300/*; do
  cmp -s "$f" "runs/pre/checkpoints/step_00000300/$(basename "$f")" ||
    fail "$(basename "$f") of the preempted job differs from the uninterrupted job's"
done
# Every logged loss of the resumed job equals the uninterrupted job's at the same step.
python3 - runs/ref/metrics.jsonl runs/pre/metrics.jsonl <<'EOF' || fail "the losses differ"
import json, sys
def losses(path):
    out = {}
    for line in open(path):
        j = json.loads(line)
        if "loss" in j:
            out.setdefault(j["step"], []).append(j["loss"])
    return out
ref, pre = losses(sys.argv[1]), losses(sys.argv[2])
compared = 0
for step, values in pre.items():
    if step not in ref:  # the first step after a resume is logged whatever the interval
        continue
    for v in values:
        if ref.get(step) != [v]:
            sys.exit(f"step {step}: loss {v} after preemption, {ref.get(step)} without")
        compared += 1
if compared < 10:
    sys.exit(f"only {compared} losses to compare")
EOF
echo "ok: requeued at step $first_stop (scontrol requeue) and again (SIGUSR1), resumed bit-exactly ($((SECONDS - t0)) s)"

# --- 3. scancel ends a job cleanly ---------------------------------------------------------------
cancel=$(sbatch "${sbatch_flags[@]}" --job-name=cancel "$root/launch/slurm.sbatch" "$config" \
  --set "$train_set" --set 'train { steps: 100000 }')
cancel_log="logs/cancel-$cancel.out"
wait_for_line "$cancel_log" "^step 20/100000 " 60
scancel "$cancel"
wait_for_state "$cancel" CANCELLED 40
wait_for_line "$cancel_log" "stop requested by signal: checkpoint written at step" 40
for _ in $(seq 100); do pgrep -f "$binary" >/dev/null || break; sleep 0.1; done
if pgrep -f "$binary" >/dev/null; then fail "switchyard processes left after scancel"; fi
[ -e runs/cancel/checkpoints/latest ] || fail "no checkpoint after scancel"
[ "$(restarts "$cancel")" = 0 ] || fail "the cancelled job was requeued"
grep -q "switchyard: requeueing" "$cancel_log" && fail "the cancelled job tried to requeue itself"
echo "ok: scancel checkpointed and ended the job, no process left ($((SECONDS - t0)) s)"
echo "slurm_sbatch_test: all three checks passed"

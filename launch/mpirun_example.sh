#!/usr/bin/env bash
# Runs switchyard's parallel runtime on N processes of this machine with Open MPI (CPU, no GPU
# needed):
#
#   launch/mpirun_example.sh [N=4] [expert_parallel_size=2] [num_experts=8]
#
# (BUILD_DIR=build-other launch/mpirun_example.sh to use another build directory.)
#
# What it runs today: build/mpi_smoke (tests/mpi/smoke.cc), because `switchyard train` does not
# use the process grid yet (the next part of issue 4). Each rank discovers its rank from
# mpirun's environment, the world splits into expert-parallel and expert-data-parallel groups,
# collectives run in each, and rank 0 prints one line per rank:
#
#   rank 1/4 | local 1 | host vm | device cpu | grid: world 4 = data 2 x expert 2 | rank 1: ...
#
# Once train uses the grid, the last line becomes:
#   mpirun "${flags[@]}" build/switchyard train --config configs/tiny.textproto \
#       --set "parallel { expert_parallel_size: $ep }"
# On a cluster with GPUs use launch/slurm.sbatch instead (one rank per GPU).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
np=${1:-4}
ep=${2:-2}
experts=${3:-8}
binary="$root/${BUILD_DIR:-build}/mpi_smoke"
[ -x "$binary" ] || { echo "no $binary: build first (launch/build.sh)" >&2; exit 1; }

flags=(-np "$np"
       --oversubscribe     # allow more ranks than cores: fine for CPU tests, slow for real runs
       --bind-to none      # mpirun pins each rank to one core by default, which would squeeze
                           # a rank's CPU worker threads onto that core
       -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1)  # -x exports a variable to every rank;
                           # N ranks each using every core would oversubscribe the machine
# Open MPI refuses to run as root unless told; containers often run as root.
[ "$(id -u)" -eq 0 ] && flags+=(--allow-run-as-root)

mpirun "${flags[@]}" "$binary" "$ep" "$experts"

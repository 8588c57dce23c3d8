#!/usr/bin/env bash
# Trains the tiny default MoE on N processes of this machine with Open MPI (no GPU needed),
# its experts spread over expert-parallel groups of EP ranks:
#
#   launch/mpirun_example.sh [N=4] [EP=2] [extra train flags...]
#
# (BUILD_DIR=build-other launch/mpirun_example.sh to use another build directory.)
#
# Every rank prints one banner line, then rank 0 prints the usual log:
#
#   rank 1/4 | local 1 | host vm | device cpu
#   model: ... | grid: world 4 = data 2 x expert 2 | rank 0: dp 0, ep 0, experts [0, 2) of 4 | ...
#
# Each rank trains on its own micro_batch sequences, so the global batch is N x micro_batch:
# the default divides the tiny config's 64 sequences over the ranks, which keeps the training
# the same as one process's (the same losses up to float summation order).
#
# The tiny config says DEVICE_AUTO: on a machine where every rank sees a GPU each rank takes
# one of its own (N at most the GPUs: launch/mpirun_example.sh 2 2 on a 2-GPU machine);
# more ranks than GPUs is an error, so there add --set 'device: DEVICE_CPU' to stay on the
# CPU (later --set fragments win).
# On a cluster use launch/slurm.sbatch instead (one rank per GPU).
#
# Across hosts without Slurm, mpirun starts the ranks over ssh: every host needs passwordless
# ssh from the first, the same build at the same path, and the data where the config says.
# One rank per GPU, 8 GPUs on each of two hosts:
#
#   mpirun -np 16 --host node1:8,node2:8 --map-by ppr:8:node --bind-to none \
#     -x NCCL_NVLS_ENABLE=0 -x NCCL_SOCKET_IFNAME=eth0 -x OMP_NUM_THREADS=8 \
#     --mca btl_tcp_if_include eth0 \
#     "$PWD/build/switchyard" train --config configs/my_experiment.textproto --run_dir "$PWD/runs/x"
#
# --map-by ppr:8:node puts ranks 0-7 on node1 and 8-15 on node2, so an expert-parallel group
# (consecutive ranks) stays within one host's NVLink; each rank takes GPU
# OMPI_COMM_WORLD_LOCAL_RANK. btl_tcp_if_include and NCCL_SOCKET_IFNAME name the NIC that
# the hosts reach each other on (MPI's and NCCL's bootstrap traffic); launch/slurm.sbatch
# lists NCCL's InfiniBand settings. The run directory must be on storage every host sees: rank
# 0 writes the config and the metrics, every rank its part of each checkpoint.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
np=${1:-4}
ep=${2:-2}
shift $(($# < 2 ? $# : 2))
binary="$root/${BUILD_DIR:-build}/switchyard"
[ -x "$binary" ] || { echo "no $binary: build first (launch/build.sh)" >&2; exit 1; }
(( 64 % np == 0 )) || { echo "N must divide the global batch of 64 sequences" >&2; exit 1; }

flags=(-np "$np"
       --oversubscribe     # allow more ranks than cores: fine for CPU tests, slow for real runs
       --bind-to none      # mpirun pins each rank to one core by default, which would squeeze
                           # a rank's CPU worker threads onto that core
       -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1)  # -x exports a variable to every rank;
                           # N ranks each using every core would oversubscribe the machine
# Open MPI refuses to run as root unless told; containers often run as root.
[ "$(id -u)" -eq 0 ] && flags+=(--allow-run-as-root)

mpirun "${flags[@]}" "$binary" train --config "$root/configs/tiny.textproto" \
  --run_dir "$root/runs/tiny-mpi" \
  --set "parallel { expert_parallel_size: $ep } train { micro_batch: $((64 / np)) }" "$@"

#!/usr/bin/env bash
# A one-host Slurm (munged + slurmctld + slurmd) on this machine, for tests of
# launch/slurm.sbatch and for trying the template out without a cluster:
#
#   launch/slurm_local.sh install        # Debian's packages (slurmctld slurmd slurm-client munge)
#   eval "$(launch/slurm_local.sh start DIR)"   # config + state in DIR; prints export SLURM_CONF=...
#   sbatch ...; squeue; scontrol ...
#   launch/slurm_local.sh stop DIR
#
# Everything lives in DIR (slurm.conf, state, spool, logs, pid files, munge's socket), so
# nothing under /etc is changed and two copies in different DIRs do not share state; the
# daemons run as the calling user (root in containers, where Slurm also runs its jobs as
# root). Each start picks free TCP ports on 127.0.0.1, so it does not collide with a Slurm
# already on the host. Jobs are tracked by process (proctrack/linuxproc) and tasks bound to
# cores with sched_setaffinity (task/affinity), not fenced by cgroups: that works without
# systemd or a writable cgroup tree; a real cluster's slurm.conf differs there. `start` waits until the node is idle and exits non-zero,
# printing the daemons' logs, when it is not within 30 s.
set -euo pipefail

usage() { echo "usage: $0 install | start DIR | stop DIR | status DIR" >&2; exit 2; }

install_packages() {
  local missing=()
  for p in slurmctld slurmd slurm-client munge; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "slurm_local: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  # The packages' own start scripts are refused where there is no init system; harmless.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2
}

# A TCP port on 127.0.0.1 that nothing listens on now (the kernel's choice of an ephemeral one).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop_daemons() {
  local dir=$1
  for name in slurmd slurmctld munged; do
    local pidfile="$dir/run/$name.pid"
    [ -s "$pidfile" ] || continue
    local pid
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

show_logs() {
  local dir=$1
  for f in "$dir"/log/*.log; do
    [ -e "$f" ] || continue
    echo "--- $f (last 20 lines)" >&2
    tail -n 20 "$f" >&2
  done
}

start() {
  local dir
  dir=$(mkdir -p "$1" && cd "$1" && pwd)
  for cmd in munged slurmctld slurmd sinfo python3; do
    command -v "$cmd" >/dev/null || {
      echo "slurm_local: $cmd not found; run '$0 install' first" >&2
      exit 1
    }
  done
  stop_daemons "$dir"
  mkdir -p "$dir"/{etc,state,spool,log,run,munge}
  chmod 700 "$dir/munge"
  local user host cpus mem_mb ctld_port slurmd_port
  user=$(id -un)
  # Slurm checks that NodeName/SlurmctldHost name this host: its short name, as `hostname -s`.
  host=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512))
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done

  # munge: a key of our own (munged insists on a private key file and socket directory).
  if [ ! -s "$dir/munge/munge.key" ]; then
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
  fi
  local socket="$dir/munge/munge.socket"
  # --force: munged refuses to start as root or with "insecure" parent directories (/tmp)
  # otherwise; this is a test rig on one host, and the key never leaves DIR.
  munged --force --key-file="$dir/munge/munge.key" --socket="$socket" \
    --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/munge.seed"

  cat >"$dir/etc/slurm.conf" <<EOF
# Written by launch/slurm_local.sh: one node (this host), one partition.
ClusterName=switchyard-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# A requeued job may start again at once (the default holds it back for a while).
JobRequeue=1
# Seconds between SIGTERM and SIGKILL when a job is cancelled or requeued: the time
# switchyard has to finish its step and write the checkpoint.
KillWait=30
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
  export SLURM_CONF="$dir/etc/slurm.conf"
  # -c: start without old state (jobs of an earlier start in DIR).
  slurmctld -c -f "$SLURM_CONF" </dev/null || { show_logs "$dir"; exit 1; }
  slurmd -f "$SLURM_CONF" </dev/null || { show_logs "$dir"; exit 1; }
  local state=""
  for _ in $(seq 60); do
    state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1 || true)
    [ "$state" = "idle" ] && break
    sleep 0.5
  done
  if [ "$state" != "idle" ]; then
    echo "slurm_local: node not idle after 30 s (state '${state:-none}')" >&2
    show_logs "$dir"
    stop_daemons "$dir"
    exit 1
  fi
  echo "export SLURM_CONF=$SLURM_CONF"
}

[ $# -ge 1 ] || usage
case $1 in
  install) install_packages ;;
  start) [ $# -eq 2 ] || usage; start "$2" ;;
  stop) [ $# -eq 2 ] || usage; stop_daemons "$2" ;;
  status)
    [ $# -eq 2 ] || usage
    SLURM_CONF="$2/etc/slurm.conf" sinfo -N
    ;;
  *) usage ;;
esac

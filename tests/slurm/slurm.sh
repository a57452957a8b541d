#!/usr/bin/env bash
# A throw-away one-node SLURM cluster on this machine, for tests/test_slurm.py (and by hand).
#
#   tests/slurm/slurm.sh start DIR     # prints "export SLURM_CONF=DIR/slurm.conf"
#   SLURM_CONF=DIR/slurm.conf sbatch ...
#   tests/slurm/slurm.sh stop DIR
#
# Everything lives under DIR: its own munge key and socket, slurm.conf, state, spool, logs and
# pid files; the ports are free ones picked at start. Nothing under /etc is touched and the
# machine's own munge/slurm (if any) is left alone. Needs root (SlurmUser=root) and Debian's
# slurm-wlm and munge (make system-deps). No cgroups: proctrack/linuxproc, task/none.
# Exit codes: 0 started/stopped, 2 usage, 3 not root or slurm/munge missing, 4 failed to start.
set -euo pipefail

cmd=${1:-}; dir=${2:-}
[[ -n "$cmd" && -n "$dir" ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

stop() {
    for name in slurmd slurmctld munged; do
        pidfile="$dir/run/$name.pid"
        [[ -s "$pidfile" ]] || continue
        pid=$(cat "$pidfile")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
}

if [[ "$cmd" == stop ]]; then stop; exit 0; fi
[[ "$cmd" == start ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

[[ "$(id -u)" == 0 ]] || { echo "slurm.sh: needs root (SlurmUser=root)" >&2; exit 3; }
for exe in munged slurmctld slurmd sbatch sinfo; do
    command -v "$exe" >/dev/null || [[ -x "/usr/sbin/$exe" ]] || { echo "slurm.sh: $exe not installed" >&2; exit 3; }
done
export PATH="$PATH:/usr/sbin"

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
for name in munged slurmctld slurmd; do
    if [[ -s "$dir/run/$name.pid" ]] && kill -0 "$(cat "$dir/run/$name.pid")" 2>/dev/null; then
        echo "slurm.sh: $name already runs for $dir (stop it first)" >&2; exit 4
    fi
done
mkdir -p "$dir"/{munge,state,spool,log,run}
chmod 700 "$dir" "$dir/munge"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
host=$(hostname -s)

# munge: a private key and socket. --force: munged wants every parent folder of its socket
# searchable by all, which pytest's /tmp/pytest-of-root (0700) is not
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge/munge.key"
munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munge.seed" \
    || { echo "slurm.sh: munged failed to start (see $dir/log/munged.log)" >&2; exit 4; }

cat > "$dir/slurm.conf" <<CONF
ClusterName=nmbidstest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
MpiDefault=none
ReturnToService=2
MinJobAge=3600
DefMemPerCPU=2000
NodeName=$host NodeAddr=127.0.0.1 CPUs=2 RealMemory=8000 State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$dir/slurm.conf"

slurmctld -f "$SLURM_CONF" || { stop; echo "slurm.sh: slurmctld failed (see $dir/log/slurmctld.log)" >&2; exit 4; }
slurmd -f "$SLURM_CONF" || { stop; echo "slurm.sh: slurmd failed (see $dir/log/slurmd.log)" >&2; exit 4; }

# wait (at most 60 s) for the node to be idle
for _ in $(seq 120); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
    if [[ "$state" == idle ]]; then echo "export SLURM_CONF=$SLURM_CONF"; exit 0; fi
    sleep 0.5
done
echo "slurm.sh: node $host not idle after 60 s (state '${state:-none}'; see $dir/log/)" >&2
stop
exit 4

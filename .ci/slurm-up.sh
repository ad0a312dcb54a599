#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine for the Slurm tests (tests/test_slurm.py):
# munge, slurmctld and slurmd on localhost, one partition `debug` holding this node.
# Needs root and Debian's slurm-wlm + munge (installed here from the package registry when
# missing). Idempotent: a cluster that already answers is left as it is.
# Prints one line: "slurm: up (...)" or "slurm: unavailable: <reason>"; exits 0 either way
# unless --strict, so `make test` still runs (the Slurm tests then skip with that reason).
set -uo pipefail
STRICT=0; [ "${1:-}" = "--strict" ] && STRICT=1
fail() { echo "slurm: unavailable: $*"; [ $STRICT = 1 ] && exit 1; exit 0; }

if sinfo -h -o %T >/dev/null 2>&1 && [ -n "$(sinfo -h -o %T 2>/dev/null | grep -E 'idle|mix|alloc')" ]; then
    echo "slurm: up (already running: $(sinfo -h -o '%P %D %T' | head -1))"; exit 0
fi
[ "$(id -u)" = 0 ] || fail "not root (slurmctld/slurmd need root here)"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    (apt-get update -q && apt-get install -y -q slurm-wlm munge) >/tmp/slurm-up-apt.log 2>&1 \
        || fail "apt-get install slurm-wlm munge failed (see /tmp/slurm-up-apt.log)"
fi

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
chown munge:munge /run/munge 2>/dev/null || true
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
# Everything as root and no cgroups: containers rarely delegate them. MinJobAge keeps a
# finished job in squeue --states=all for an hour, which is where minimind reads outcomes
# when there is no accounting database (sacct then says so and is skipped).
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=minimind-ci
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=3600
KillWait=20
OverTimeLimit=0
InactiveLimit=0
MpiDefault=none
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x munged >/dev/null || { runuser -u munge -- /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force; } \
    || fail "munged did not start"
pgrep -x slurmctld >/dev/null || slurmctld || fail "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
pgrep -x slurmd >/dev/null || slurmd || fail "slurmd did not start (see /var/log/slurm/slurmd.log)"
for _ in $(seq 1 30); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1)
    case "$state" in idle*|mix*|alloc*) echo "slurm: up ($HOST, $CPUS CPUs, partition debug)"; exit 0;; esac
    case "$state" in down*|drain*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1;; esac
    sleep 1
done
fail "node $HOST did not become idle (state: ${state:-none}; see /var/log/slurm/)"

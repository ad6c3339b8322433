#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, from Debian's packages (slurm-wlm, munge):
# munged, slurmctld and slurmd run as background daemons (no systemd, no cgroups, no slurmdbd).
# Used by tests/test_slurm.py; by hand: `sudo bash tests/slurm/start_cluster.sh`.
#
# Idempotent: packages are installed only when missing, and daemons that already answer are
# left running. Exit status: 0 once `sinfo` shows the node idle; 77 when Slurm cannot be
# installed here (not root, no apt-get, apt-get failed: the test skips with the printed reason);
# 1 when it is installed but does not start (the reason and the daemon logs are printed).
#
# Settings (environment):
#   SLURM_TEST_STATE  state, spool, log and pid files (default /var/lib/midigen-slurm-test)
#   SLURM_TEST_CPUS   CPUs the node declares (default: nproc, at least 8). Slurm rejects a job
#                     asking more CPUs than any node has, and workflow/profiles/slurm asks 8 for
#                     encode; the node may declare more than the machine has
#                     (SlurmdParameters=config_overrides), since Slurm does not pin CPUs here
#                     (task/none).
#
# Why the configuration is what it is:
#   * no accounting database: AccountingStorageType=accounting_storage/none, so `sacct` has
#     nothing to read; Snakemake's slurm plugin then asks `squeue` for job states
#     (--slurm-status-command squeue), which sees finished jobs for MinJobAge seconds (600).
#   * proctrack/linuxproc and task/none: no cgroups (containers rarely have them writable).
#   * SelectTypeParameters=CR_Core_Memory: jobs get the cores and memory (--mem) they ask for,
#     and wait when the node is full.
set -euo pipefail

STATE=${SLURM_TEST_STATE:-/var/lib/midigen-slurm-test}
CONF=/etc/slurm/slurm.conf
MARK="# written by midigen tests/slurm/start_cluster.sh"
NODE=$(hostname -s)
export DEBIAN_FRONTEND=noninteractive

cannot_install() { echo "slurm test cluster: cannot install: $*" >&2; exit 77; }
fail() {
    echo "slurm test cluster: $*" >&2
    for log in "$STATE"/log/*.log; do
        [ -s "$log" ] && { echo "--- last lines of $log" >&2; tail -n 20 "$log" >&2; }
    done
    exit 1
}
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# 1. Packages.
missing=()
for pair in munged:munge slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] \
        || missing+=("${pair##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || cannot_install "not root, cannot apt-get install ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || cannot_install "apt-get not found (not Debian/Ubuntu)"
    echo "slurm test cluster: installing ${missing[*]} (apt-get)"
    install=(apt-get install -y --no-install-recommends "${missing[@]}")
    if ! "${install[@]}" >/tmp/midigen-slurm-apt.log 2>&1; then
        apt-get update >>/tmp/midigen-slurm-apt.log 2>&1 || true  # stale package lists
        "${install[@]}" >>/tmp/midigen-slurm-apt.log 2>&1 \
            || cannot_install "apt-get install ${missing[*]} failed: $(tail -n 1 /tmp/midigen-slurm-apt.log)"
    fi
fi
[ "$(id -u)" -eq 0 ] || fail "must run as root to start slurmctld and slurmd"
PATH=$PATH:/usr/sbin

# 2. Configuration (rewritten each time; never over a slurm.conf this script did not write).
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    fail "$CONF exists and was not written by this script; not touching a real cluster"
fi
mkdir -p "$STATE"/ctld "$STATE"/d "$STATE"/log "$STATE"/run /etc/slurm
cpus=$(nproc)
cpus=${SLURM_TEST_CPUS:-$(( cpus > 8 ? cpus : 8 ))}
mem_mb=$(awk '/^MemTotal:/ { print int($2 / 1024 * 0.9) }' /proc/meminfo)  # 10% for the OS
new_conf=$(cat <<EOF
$MARK
ClusterName=midigen-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MinJobAge=600
ReturnToService=2
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
changed=0
if [ "$(cat "$CONF" 2>/dev/null)" != "$new_conf" ]; then
    printf '%s\n' "$new_conf" >"$CONF"
    changed=1
fi

# 3. Daemons: munged, then slurmctld, then slurmd.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged || fail "munged did not start (see /var/log/munge)"
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n | unmunge >/dev/null || fail "munged started but a credential does not round-trip"
fi
if [ $changed = 1 ] && running "$STATE/run/slurmctld.pid"; then  # a new slurm.conf: restart
    kill "$(cat "$STATE/run/slurmd.pid" 2>/dev/null)" 2>/dev/null || true
    kill "$(cat "$STATE/run/slurmctld.pid")" 2>/dev/null || true
    sleep 2
fi
if ! running "$STATE/run/slurmctld.pid"; then
    slurmctld || fail "slurmctld did not start"
fi
if ! running "$STATE/run/slurmd.pid"; then
    slurmd || fail "slurmd did not start"
fi

# 4. Wait for the node; a node left down or drained by an earlier run is resumed.
state=""
for i in $(seq 60); do
    state=$(sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n 1 || true)
    case "$state" in
        idle|mix|alloc) break ;;
        down*|drain*|drng*) [ $((i % 5)) = 0 ] && scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 1
done
case "$state" in
    idle|mix|alloc) ;;
    *) fail "node $NODE is not idle after 60 s (sinfo state: '${state:-no answer}')" ;;
esac
echo "slurm test cluster: node $NODE is $state ($cpus CPUs, ${mem_mb} MB); logs in $STATE/log"
sinfo

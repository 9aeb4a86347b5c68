#!/usr/bin/env bash
# A single-node SLURM cluster on this Debian 12 machine, as the SLURM tests need it
# (tests/test_slurm.py, tests/test_launch.py): munge, MariaDB + slurmdbd (accounting, so that
# the executor plugin's default `sacct` status checks work as on a real cluster), slurmctld and
# slurmd, with GPUs declared as GRES so that GPU requests are accepted on a machine without any.
#
# Run as root: `bash .ci/slurm-cluster.sh`. Idempotent: a rerun rewrites the configs, starts
# what is not running and waits until the node is idle. Settings (environment):
#   SLURM_CI_GPUS      GPUs declared on the node (default 2; null devices, not GPUs)
#   SLURM_CI_ACCOUNT   account registered for root and used by the tests (default fmriflow)
set -euo pipefail

GPUS="${SLURM_CI_GPUS:-2}"
ACCOUNT="${SLURM_CI_ACCOUNT:-fmriflow}"
CLUSTER=fmriflow-ci
NODE="$(hostname -s)"
CPUS="$(nproc)"
# leave 1 GiB to the system; memory is a consumable resource (CR_Core_Memory)
MEM_MB=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))

if [ "$(id -u)" -ne 0 ]; then
    echo "slurm-cluster.sh: run as root" >&2
    exit 1
fi

log() { echo "slurm-cluster: $*"; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    shift 2
    for _ in $(seq "$limit"); do
        if "$@" > /dev/null 2>&1; then return 0; fi
        sleep 1
    done
    echo "slurm-cluster.sh: $what did not come up within ${limit}s" >&2
    return 1
}

# --- packages ---------------------------------------------------------------------------------
need=()
for pkg in slurm-wlm slurmdbd munge mariadb-server; do
    dpkg -s "$pkg" > /dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" > /dev/null
fi

# slurmctld, slurmd and slurmdbd find each other by this machine's short name
getent hosts "$NODE" > /dev/null || echo "127.0.0.1 $NODE" >> /etc/hosts

# --- munge ------------------------------------------------------------------------------------
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
if ! munge -n 2> /dev/null | unmunge > /dev/null 2>&1; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
fi
wait_for 20 munged sh -c 'munge -n | unmunge'

# --- MariaDB (slurmdbd's store) ----------------------------------------------------------------
install -d -o mysql -g mysql -m 0755 /run/mysqld
if ! mysqladmin ping > /dev/null 2>&1; then
    log "starting MariaDB"
    # mysqld_safe stays in the foreground: detach it, its daemon outlives this script
    setsid mysqld_safe > /var/log/mysqld_safe.log 2>&1 < /dev/null &
fi
wait_for 60 MariaDB mysqladmin ping
# slurmdbd connects over the socket as root (unix_socket auth, Debian's default for root)
mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db"

# --- configuration ----------------------------------------------------------------------------
install -d -m 0755 /etc/slurm
install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld /var/log/slurm /run/slurm
install -d -m 0755 /var/spool/slurmd

cat > /etc/slurm/slurm.conf.new <<EOF
# written by .ci/slurm-cluster.sh: one node, GPUs declared as GRES without devices
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# containers have no cgroup hierarchy SLURM may own: track processes by their parent ids
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a default, a job without --mem takes the whole node and the jobs run one at a time
DefMemPerCPU=1000
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$NODE
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
# sacct shows the comment the executor plugin gives each job (rule_<name>_wildcards_<...>)
AccountingStoreFlags=job_comment
ReturnToService=2
MinJobAge=300
SchedulerParameters=batch_sched_delay=1,sched_min_interval=100000
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:ci:$GPUS State=UNKNOWN
PartitionName=main Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

# No GPU here: GRES entries only make GPU requests schedulable. slurmd counts a GPU per device
# file and refuses the same file twice, so each declared GPU is a null device of its own name.
{
    echo "# written by .ci/slurm-cluster.sh"
    echo "AutoDetect=off"
    for i in $(seq 0 $((GPUS - 1))); do
        [ -c "/dev/slurm-ci-gpu$i" ] || mknod -m 666 "/dev/slurm-ci-gpu$i" c 1 3  # /dev/null's numbers
        echo "NodeName=$NODE Name=gpu Type=ci File=/dev/slurm-ci-gpu$i"
    done
} > /etc/slurm/gres.conf.new

cat > /etc/slurm/slurmdbd.conf.new <<EOF
# written by .ci/slurm-cluster.sh
AuthType=auth/munge
DbdHost=$NODE
SlurmUser=slurm
PidFile=/run/slurm/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
EOF

changed=0
for conf in slurm.conf gres.conf slurmdbd.conf; do
    if ! cmp -s "/etc/slurm/$conf.new" "/etc/slurm/$conf"; then
        mv "/etc/slurm/$conf.new" "/etc/slurm/$conf"
        changed=1
    else
        rm "/etc/slurm/$conf.new"
    fi
done
chown slurm:slurm /etc/slurm/slurmdbd.conf && chmod 600 /etc/slurm/slurmdbd.conf

# slurmdbd runs as the slurm user and reaches MariaDB over its socket
mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED VIA unix_socket;
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

running() {  # running PIDFILE: the daemon whose pid the file holds is alive
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2> /dev/null
}

if [ "$changed" -eq 1 ]; then
    # configs changed: restart the daemons that read them
    for pidfile in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid /run/slurm/slurmdbd.pid; do
        if running "$pidfile"; then
            kill "$(cat "$pidfile")"
            while running "$pidfile"; do sleep 0.2; done 2> /dev/null
        fi
    done
fi

# --- slurmdbd, accounting records, slurmctld, slurmd -------------------------------------------
running /run/slurm/slurmdbd.pid || { log "starting slurmdbd"; /usr/sbin/slurmdbd; }
wait_for 60 slurmdbd sacctmgr --immediate list cluster

sacctmgr --immediate --noheader --parsable2 list cluster format=cluster | grep -qw "$CLUSTER" ||
    sacctmgr --immediate add cluster "$CLUSTER" > /dev/null
sacctmgr --immediate --noheader --parsable2 list account format=account | grep -qw "$ACCOUNT" ||
    sacctmgr --immediate add account "$ACCOUNT" cluster="$CLUSTER" \
        description="fmriflow tests" organization=fmriflow > /dev/null
sacctmgr --immediate --noheader --parsable2 list association format=user,account user=root |
    grep -qw "$ACCOUNT" ||
    sacctmgr --immediate add user root account="$ACCOUNT" cluster="$CLUSTER" > /dev/null

running /run/slurm/slurmctld.pid || { log "starting slurmctld"; /usr/sbin/slurmctld; }
wait_for 60 slurmctld scontrol ping
running /run/slurm/slurmd.pid || { log "starting slurmd"; /usr/sbin/slurmd; }

# a node left down or drained by an earlier run (e.g. a killed slurmd) comes back
if sinfo --noheader --node "$NODE" --format %t | grep -Eq 'down|drain'; then
    scontrol update nodename="$NODE" state=resume || true
fi
wait_for 90 "node $NODE (idle)" sh -c "sinfo --noheader --node '$NODE' --format %t | grep -Eqx '(idle|mix|alloc)'"
log "ready: $(sinfo --noheader --format '%P %D %t %c CPUs %m MB %G')"

#!/usr/bin/env bash
# A single-node SLURM cluster with accounting on this Debian machine, for trying and testing the suite's
# SLURM path (hydra/launcher=slurm) without a real cluster. Plain daemons, no systemd; run as root.
#
#   sudo bash scripts/slurm_cluster.sh up       # install (once: apt), configure, start; idempotent
#   eval "$(bash scripts/slurm_cluster.sh env)" # SLURM_CONF for sinfo, sbatch, ... and the suite's runs
#   sudo bash scripts/slurm_cluster.sh status   # each daemon's pid and sinfo
#   sudo bash scripts/slurm_cluster.sh down     # stop its jobs and the daemons it started (by their pids)
#   sudo bash scripts/slurm_cluster.sh clean    # down, then delete its state folder (configs, database, logs)
#
# Everything lives in $STN_SLURM_DIR (default /tmp/stn-slurm): slurm.conf and slurmdbd.conf, a munge key and
# socket of its own, a MariaDB data folder served on 127.0.0.1:$STN_SLURM_DB_PORT, the daemons' state, logs
# and pid files. Nothing in /etc is written and no system service is started or stopped; the daemons it
# starts are the only processes `down` ends. The cluster: one node (this machine's CPUs and 90% of its
# memory), one partition ($STN_SLURM_PARTITION, default debug), accounting through slurmdbd (so a cancelled
# job's state is known: sacct), ProctrackType=proctrack/linuxproc and TaskPlugin=task/none (no cgroups), and
# short delays (a requeued job starts again after about cred_expire=$STN_SLURM_REQUEUE_DELAY s, the scheduler
# passes every few seconds) so that tests take seconds where a default cluster takes minutes. docs/slurm.md.
set -euo pipefail

DIR=${STN_SLURM_DIR:-/tmp/stn-slurm}
PARTITION=${STN_SLURM_PARTITION:-debug}
DB_PORT=${STN_SLURM_DB_PORT:-13306}
CTLD_PORT=${STN_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${STN_SLURM_SLURMD_PORT:-6818}
DBD_PORT=${STN_SLURM_DBD_PORT:-6819}
REQUEUE_DELAY=${STN_SLURM_REQUEUE_DELAY:-10}
CLUSTER=stn
PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)
NODE=$(hostname -s)
export SLURM_CONF=$DIR/slurm.conf

say() { echo "slurm_cluster: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

# --- helpers ------------------------------------------------------------------------------------------------

# pid_file NAME: where NAME writes its pid. pid_of NAME: that pid if the process is alive and is NAME, else nothing.
pid_file() { [[ $1 == mariadb ]] && echo "$DIR/run/mariadb/mariadb.pid" || echo "$DIR/run/$1.pid"; }

pid_of() {
    local name=$1 file pid comm
    file=$(pid_file "$name")
    [[ -s $file ]] || return 0
    pid=$(tr -dc '0-9' <"$file")
    [[ -n $pid && -d /proc/$pid ]] || return 0
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    case $name in
        mariadb) [[ $comm == mariadbd || $comm == mysqld ]] ;;
        *) [[ $comm == "$name" ]] ;;
    esac && echo "$pid"
    return 0
}

# wait_for SECONDS WHAT PID COMMAND...: retry COMMAND every half second until it succeeds; fail naming WHAT
# when SECONDS pass, or when process PID (WHAT's pid file if empty, after 5 s) is gone.
wait_for() {
    local seconds=$1 what=$2 pid=$3
    shift 3
    local deadline=$((SECONDS + seconds)) waited=$SECONDS
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what did not come up within ${seconds} s; its log: $(log_of "$what")"
        if [[ -n $pid && ! -d /proc/$pid ]] || [[ -z $pid && $((SECONDS - waited)) -gt 5 && -z $(pid_of "$what") ]]; then
            die "$what stopped while starting; its log: $(log_of "$what")"
        fi
        sleep 0.5
    done
}

log_of() { echo "$DIR/log/$1.log"; }

munge_ok() { munge -n -S "$DIR/run/munge.socket" | unmunge -S "$DIR/run/munge.socket"; }
db() { mariadb --no-defaults --socket="$DIR/run/mariadb/mariadb.sock" -u root "$@"; }
node_up() { sinfo -h -N -o '%T' | grep -Eq '^(idle|mixed|allocated|completing)'; }

install_packages() {
    local missing=()
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "apt-get not found: this script sets up a cluster on Debian or Ubuntu; install ${missing[*]} yourself"
    say "installing ${missing[*]} (apt-get; about a minute)"
    # policy-rc.d: the packages' own services stay off (this script runs its daemons itself).
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    (apt-get install -y "${missing[@]}" >"$DIR/log/apt.log" 2>&1 ||
        { apt-get update >>"$DIR/log/apt.log" 2>&1 && apt-get install -y "${missing[@]}" >>"$DIR/log/apt.log" 2>&1; }) ||
        { ((made_policy)) && rm -f "$policy"; die "apt-get install ${missing[*]} failed; see $DIR/log/apt.log"; }
    ((made_policy)) && rm -f "$policy"
    return 0
}

write_configs() {
    local cpus memory
    cpus=$(nproc)
    memory=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    [[ -s $DIR/db.password ]] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$DIR/db.password")
    local auth="AuthType=auth/munge
AuthInfo=socket=$DIR/run/munge.socket,cred_expire=$REQUEUE_DELAY"
    cat >"$DIR/slurm.conf.new" <<EOF
# Written by scripts/slurm_cluster.sh: a single-node test cluster. Rewritten by each \`up\`.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
$auth
CredType=cred/munge
StateSaveLocation=$DIR/state/slurmctld
SlurmdSpoolDir=$DIR/state/slurmd
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$(log_of slurmctld)
SlurmdLogFile=$(log_of slurmd)
PlugStackConfig=$DIR/plugstack.conf
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmdParameters=config_overrides
# Short delays: SIGTERM to SIGKILL (KillWait), the scheduler's passes, a requeued job's wait (cred_expire above).
KillWait=10
MinJobAge=60
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2,sched_min_interval=100000
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$DIR/run/munge.socket  # the munge socket for slurmdbd connections
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    if ! cmp -s "$DIR/slurm.conf.new" "$DIR/slurm.conf" && [[ -n $(pid_of slurmctld) ]]; then
        say "note: slurm.conf changed while the cluster runs; \`$0 down\` then \`up\` applies it"
    fi
    mv "$DIR/slurm.conf.new" "$DIR/slurm.conf"
    : >"$DIR/plugstack.conf"
    (
        umask 077
        cat >"$DIR/slurmdbd.conf" <<EOF
# Written by scripts/slurm_cluster.sh. slurmdbd reads it from slurm.conf's folder (SLURM_CONF).
$auth
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$(log_of slurmdbd)
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$DIR/db.password")
StorageLoc=slurm_acct_db
EOF
    )
}

# --- the daemons, in order ------------------------------------------------------------------------------------

start_munged() {
    [[ -n $(pid_of munged) ]] && return 0
    if [[ ! -s $DIR/munge/munge.key ]]; then
        (umask 077 && dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none)
    fi
    chown -R munge:munge "$DIR/munge"
    chmod 700 "$DIR/munge"
    chmod 600 "$DIR/munge/munge.key"
    rm -f "$DIR/run/munge.socket"*
    # As root with --force: munged prefers its own user, but this key and socket are this cluster's alone.
    munged --force --socket="$DIR/run/munge.socket" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/run/munged.pid" --log-file="$(log_of munged)" --seed-file="$DIR/munge/munged.seed" \
        >>"$(log_of munged)" 2>&1 || die "munged did not start; its log: $(log_of munged)"
    wait_for 20 munged "" munge_ok
}

start_mariadb() {
    if [[ -z $(pid_of mariadb) ]]; then
        if [[ ! -d $DIR/mariadb/mysql ]]; then
            mkdir -p "$DIR/mariadb"
            chown mysql:mysql "$DIR/mariadb"
            mariadb-install-db --no-defaults --datadir="$DIR/mariadb" --user=mysql --skip-test-db \
                --auth-root-authentication-method=socket >"$(log_of mariadb-install)" 2>&1 ||
                die "mariadb-install-db failed; see $(log_of mariadb-install)"
        fi
        # Its socket and pid file in a folder of its own: mariadbd writes them as the mysql user.
        mkdir -p "$DIR/run/mariadb" && chown mysql:mysql "$DIR/run/mariadb"
        touch "$(log_of mariadb)" && chown mysql:mysql "$(log_of mariadb)"
        setsid mariadbd --no-defaults --user=mysql --datadir="$DIR/mariadb" --socket="$DIR/run/mariadb/mariadb.sock" \
            --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$(pid_file mariadb)" \
            --log-error="$(log_of mariadb)" </dev/null >/dev/null 2>&1 &
        wait_for 60 mariadb $! db -e 'SELECT 1'
    fi
    local password
    password=$(cat "$DIR/db.password")
    db -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$password';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" ||
        die "could not create the accounting database's user; see $(log_of mariadb)"
}

start_slurm_daemon() {  # NAME READY-CHECK...
    local name=$1
    shift
    [[ -n $(pid_of "$name") ]] && return 0
    "$name" >>"$(log_of "$name")" 2>&1 || die "$name did not start; its log: $(log_of "$name")"
    wait_for 60 "$name" "" "$@"
}

up() {
    [[ $(id -u) == 0 ]] || die "run as root (the daemons run as root; apt-get installs the packages)"
    mkdir -p "$DIR"/{run,log,munge,state/slurmctld,state/slurmd}
    chmod 755 "$DIR" "$DIR/run" "$DIR/log"
    local started=$SECONDS
    install_packages
    write_configs
    start_munged
    start_mariadb
    start_slurm_daemon slurmdbd sacctmgr -n list cluster
    start_slurm_daemon slurmctld scontrol ping
    # The cluster's record in the accounting database (slurmctld adds it too, a little later).
    sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    start_slurm_daemon slurmd node_up
    scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true  # a node drained by an earlier run
    say "up in $((SECONDS - started)) s: partition $PARTITION, node $NODE ($(nproc) CPUs); SLURM_CONF=$SLURM_CONF"
    say "use it from a shell with: eval \"\$(bash $0 env)\""
}

down() {
    if [[ -n $(pid_of slurmctld) ]]; then
        local jobs
        jobs=$(squeue -h -o '%A' 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            say "cancelling the cluster's jobs: $(echo $jobs)"
            scancel $jobs 2>/dev/null || true
            local deadline=$((SECONDS + 30))
            while [[ -n $(squeue -h -o '%A' 2>/dev/null) ]] && ((SECONDS < deadline)); do sleep 1; done
        fi
    fi
    for name in slurmd slurmctld slurmdbd mariadb munged; do
        local pid
        pid=$(pid_of "$name")
        [[ -z $pid ]] && continue
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 30))
        while [[ -d /proc/$pid ]] && ((SECONDS < deadline)); do sleep 0.2; done
        if [[ -d /proc/$pid ]]; then
            say "$name (pid $pid) ignored SIGTERM for 30 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        say "stopped $name (pid $pid)"
    done
    rm -f "$DIR"/run/*.pid "$DIR"/run/mariadb/*.pid
}

status() {
    local all=0
    for name in munged mariadb slurmdbd slurmctld slurmd; do
        local pid
        pid=$(pid_of "$name")
        if [[ -n $pid ]]; then
            echo "$name: running (pid $pid)"
        else
            echo "$name: not running"
            all=1
        fi
    done
    if ((all == 0)); then
        sinfo
        return 0
    fi
    return 3
}

case ${1:-} in
    up) up ;;
    down) down ;;
    clean)
        down
        rm -rf "$DIR"
        say "removed $DIR"
        ;;
    status) status ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *)
        echo "usage: $0 up|down|status|env|clean   (state in \$STN_SLURM_DIR, default /tmp/stn-slurm)" >&2
        exit 2
        ;;
esac

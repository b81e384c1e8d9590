#!/usr/bin/env bash
# Bring up a one-host Slurm (munge + slurmctld + slurmd) for `--launcher slurm`, as root.
# Idempotent: when its Slurm already runs with idle nodes it exits 0 at once; a Slurm whose
# slurm.conf this script did not write (a real cluster) is left alone.
# Prints one line; on failure one ERROR line and a non-zero exit.
#
# Variables:
#   SLURM_NODES          simulated nodes (default 1). N>1 runs N slurmd on this host, named
#                        <host>-1 .. <host>-N, each on its own port (Debian's slurmd can).
#   SLURM_CLUSTER_NAME   ClusterName (default dtrain)
#   SLURM_PARTITION      the default partition (default debug)
#   SLURM_WAIT           seconds to wait for the nodes to become idle (default 30)
set -uo pipefail

NODES=${SLURM_NODES:-1}
CLUSTER=${SLURM_CLUSTER_NAME:-dtrain}
PARTITION=${SLURM_PARTITION:-debug}
WAIT=${SLURM_WAIT:-30}
HOST=$(hostname -s)
CONF=/etc/slurm/slurm.conf
MARK="# written by dtrain-magics scripts/slurm-local.sh"
LOG_DIR=/var/log/slurm
STATE_DIR=/var/lib/slurm/slurmctld
SPOOL_DIR=/var/lib/slurm/slurmd
BASE_PORT=17000

ok() { printf '[slurm-local] %s\n' "$*"; exit 0; }
die() { printf '[slurm-local] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $NODES =~ ^[1-9][0-9]*$ ]] || die "SLURM_NODES must be a positive integer, not '$NODES'."
if ((NODES == 1)); then
  NAMES=("$HOST")
else
  mapfile -t NAMES < <(for i in $(seq "$NODES"); do echo "$HOST-$i"; done)
fi
NODE_LIST=$(IFS=,; echo "${NAMES[*]}")

# -- checks -------------------------------------------------------------------------------------

daemon_running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
daemons_running() {
  daemon_running /run/slurmctld.pid || return 1
  for name in "${NAMES[@]}"; do daemon_running "/run/slurmd-$name.pid" || return 1; done
}
controller_up() { command -v scontrol >/dev/null && scontrol ping 2>/dev/null | grep -q 'is UP'; }
# the distinct states of our nodes, e.g. "idle" or "idle,mixed"
node_states() { sinfo -h -N -n "$NODE_LIST" -o '%T' 2>/dev/null | sort -u | paste -sd, -; }
nodes_ready() {
  controller_up || return 1
  [[ $(sinfo -h -N -n "$NODE_LIST" -o '%N' 2>/dev/null | sort -u | wc -l) -eq $NODES ]] || return 1
  [[ $(node_states) =~ ^((idle|mixed|allocated|completing)(,|$))+$ ]]
}

config() {
  local cpus i
  cpus=$(nproc)
  # 2 ranks must fit on each node even on a 1-core machine: declare 2 CPUs, slurmd accepts it
  ((cpus < 2)) && cpus=2
  cat <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$HOST
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
SlurmdUser=root
SlurmdParameters=config_overrides
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
EOF
  if ((NODES == 1)); then
    echo "NodeName=$HOST CPUs=$cpus State=UNKNOWN"
  else
    for i in $(seq "$NODES"); do
      echo "NodeName=$HOST-$i NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((BASE_PORT + i))" \
        "CPUs=$cpus State=UNKNOWN"
    done
  fi
  echo "PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
}

if controller_up && [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
  ok "Slurm already runs here with a slurm.conf this script did not write; leaving it as is."
fi
if nodes_ready && cmp -s <(config) "$CONF" && daemons_running; then
  ok "Slurm is up: $NODE_LIST $(node_states) in partition $PARTITION."
fi

# -- setup --------------------------------------------------------------------------------------

[[ $(id -u) -eq 0 ]] || die "must run as root to install and start Slurm (try: sudo $0)."

install_packages() {
  command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v munged >/dev/null && return 0
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends
    slurm-wlm munge)
  "${apt[@]}" >/tmp/slurm-local-apt.log 2>&1 && return 0
  apt-get update -q >>/tmp/slurm-local-apt.log 2>&1 && "${apt[@]}" >>/tmp/slurm-local-apt.log 2>&1
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  local key=/etc/munge/munge.key
  mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
  if [[ ! -s $key ]]; then
    dd if=/dev/urandom of="$key" bs=1024 count=1 status=none || return 1
  fi
  chown munge:munge /etc/munge "$key" /run/munge /var/log/munge /var/lib/munge || return 1
  chmod 700 /etc/munge && chmod 400 "$key" && chmod 755 /run/munge || return 1
  munge_works && return 0
  runuser -u munge -- /usr/sbin/munged || return 1
  for _ in $(seq 20); do munge_works && return 0; sleep 0.25; done
  return 1
}

# Stop the daemon of a pid file this script wrote earlier (so a new slurm.conf takes effect).
stop_daemon() {
  local pid
  [[ -f $1 ]] || return 0
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || { rm -f "$1"; return 0; }
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  rm -f "$1"
}

# Write slurm.conf; if it changed, stop the daemons started with the old one.
write_config() {
  local pidfile
  mkdir -p /etc/slurm "$LOG_DIR" "$STATE_DIR" || return 1
  for name in "${NAMES[@]}"; do mkdir -p "$SPOOL_DIR/$name" || return 1; done
  config >"$CONF.new" || return 1
  if cmp -s "$CONF.new" "$CONF"; then
    rm -f "$CONF.new"
    return 0
  fi
  for pidfile in /run/slurmd*.pid /run/slurmctld.pid; do stop_daemon "$pidfile"; done
  mv "$CONF.new" "$CONF"
}

start_slurm() {
  daemon_running /run/slurmctld.pid || slurmctld || return 1
  for name in "${NAMES[@]}"; do
    daemon_running "/run/slurmd-$name.pid" || slurmd -N "$name" || return 2
  done
}

wait_for_nodes() {
  local state
  for _ in $(seq $((WAIT * 4))); do
    nodes_ready && return 0
    state=$(node_states)
    if [[ $state =~ down|drain ]]; then
      scontrol update NodeName="$NODE_LIST" State=RESUME 2>/dev/null
    fi
    sleep 0.25
  done
  return 1
}

install_packages || die "could not install slurm-wlm and munge with apt-get (see /tmp/slurm-local-apt.log)."
start_munge || die "munged did not start (see /var/log/munge/munged.log)."
write_config || die "could not write $CONF."
start_slurm
case $? in
  1) die "slurmctld did not start (see $LOG_DIR/slurmctld.log)." ;;
  2) die "slurmd did not start (see $LOG_DIR/slurmd-*.log)." ;;
esac
wait_for_nodes || die "nodes $NODE_LIST are '$(node_states)' after ${WAIT}s, not idle" \
  "(see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd-*.log)."
ok "Slurm is up: $NODE_LIST $(node_states) in partition $PARTITION."

#!/usr/bin/env bash
# A one-host Slurm cluster for trying `severstal sweep --executor slurm` (Debian's slurm-wlm, as root,
# without systemd: in a container or a VM).
#
#   scripts/slurm_single_node.sh start   # install if needed, write slurm.conf, start munged, slurmctld, slurmd
#   scripts/slurm_single_node.sh stop    # stop the three daemons
#
# One partition `debug` with this host's CPUs (and its GPUs through gres, when nvidia-smi lists any),
# no accounting database (so `sacct` has nothing to say; `squeue` and `scontrol show job` do),
# processes tracked without cgroups (slurmd still needs a cgroup hierarchy mounted). Logs: /var/log/slurm/. Then, e.g.:
#   severstal sweep --config configs/ensemble_debug.yaml --executor slurm --partition debug --gpus-per-job 0
set -euo pipefail
action=${1:-start}
conf_dir=/etc/slurm
host=$(hostname -s)

# The daemons this script started, by the process ids in their pid files.
stop() {
  local pid_file pid
  for pid_file in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
    [ -s "$pid_file" ] || continue
    pid=$(cat "$pid_file")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    rm -f "$pid_file"
  done
}

if [ "$action" = stop ]; then
  stop
  exit 0
fi
[ "$action" = start ] || { echo "usage: scripts/slurm_single_node.sh start|stop" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "error: run as root (it installs packages and starts daemons)" >&2; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y slurm-wlm munge
fi

cpus=$(nproc)
memory_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
gpus=0
if command -v nvidia-smi >/dev/null; then
  gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
fi
gres_node="" gres_types=""
if [ "$gpus" -gt 0 ]; then
  gres_node=" Gres=gpu:$gpus"
  gres_types="GresTypes=gpu"
  : > "$conf_dir/gres.conf"
  for ((i = 0; i < gpus; i++)); do echo "Name=gpu File=/dev/nvidia$i" >> "$conf_dir/gres.conf"; done
fi

mkdir -p "$conf_dir" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat > "$conf_dir/slurm.conf" <<CONF
ClusterName=single
SlurmctldHost=$host
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
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
$gres_types
NodeName=$host CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN$gres_node
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
# slurmd always loads a cgroup plugin; autodetect picks the v1 or v2 hierarchy that is mounted.
cat > "$conf_dir/cgroup.conf" <<CONF
CgroupPlugin=autodetect
CgroupAutomount=yes
CONF

stop
sleep 1
# munge: the key the package made, or a new one; munged as the munge user.
[ -s /etc/munge/munge.key ] || { mungekey --create --force 2>/dev/null || create-munge-key -f; }
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
runuser -u munge -- munged
slurmctld
slurmd
for _ in $(seq 30); do
  if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
    sinfo
    exit 0
  fi
  sleep 1
done
echo "error: the node did not come up idle; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
sinfo || true
exit 1

#!/usr/bin/env bash
# Starts ringattn under OpenMPI's mpirun with one rank per GPU (or N CPU ranks) on one or more
# nodes, prints the exact command, then runs it.
#
#   scripts/launch.sh [options] CONFIG [ringattn options...]
#
#   scripts/launch.sh -n 4 configs/demo.json --set train.steps=50              # the demo: 4 ranks
#   scripts/launch.sh -n 4 configs/tiny.json --resume                          # 4 CPU ranks here
#   scripts/launch.sh -n 8 -H gpu01,gpu02 --run-dir runs/exp1 configs/7b.json  # 16 ranks, 2 nodes
#   scripts/launch.sh -n 8 --hostfile hosts.txt --nccl-ifname eth0 --dry-run configs/7b.json
#   scripts/launch.sh -n 4 --command "bench train" configs/demo.json --steps 3  # its step time
#
# Options:
#   -n, --ranks-per-node N  ranks on each node (default: the GPUs nvidia-smi lists here, else 1)
#   -H, --hosts H1,H2,...   the nodes (default: this one); needs passwordless ssh between them
#       --hostfile FILE     the nodes, one per line (# comments and "slots=" are ignored)
#       --bind WHAT         mpirun --bind-to: none (default), core, socket or numa
#       --run-dir DIR       the run directory (--set run_dir=DIR; default: the config's run_dir)
#       --command CMD       the ringattn subcommand, split into words at spaces (default: train;
#                           eval, forward, "bench train", "bench throughput", "bench max-context"
#                           work too: every one that takes --config)
#       --nccl-debug LEVEL  NCCL_DEBUG for every rank (e.g. WARN, INFO)
#       --nccl-ifname IF    NCCL_SOCKET_IFNAME (the network interface NCCL uses between nodes)
#       --nccl-ib-hca HCA   NCCL_IB_HCA (which InfiniBand adapters NCCL uses)
#   -x, --env NAME[=VALUE]  export a variable to every rank (repeatable)
#       --mpirun-arg ARG    one more mpirun argument, as is (repeatable)
#       --dry-run           print the command and exit without running it
#   -h, --help
# Everything after CONFIG (--set key=value, --resume, ...) goes to ringattn unchanged. Every
# NCCL_* variable set in this shell is forwarded to all ranks, and so are OPENBLAS_NUM_THREADS and
# OMP_NUM_THREADS when set. The binary is $RINGATTN_BUILD/bin/ringattn (default: build/), mpirun
# is $MPIRUN (default: mpirun). The ranks check that MPI's world size is the one asked for here
# (RINGATTN_WORLD_SIZE) and refuse to start otherwise.
set -euo pipefail
# shellcheck source=scripts/env.sh disable=SC1091
source "$(dirname "$0")/env.sh"

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit "${1:-0}"
}
die() {
  echo "launch.sh: $*" >&2
  exit 2
}
need_value() { [ $# -ge 2 ] || die "$1 needs a value"; }

ranks_per_node=""
hosts=""
hostfile=""
bind=none
run_dir=""
command=(train)
dry_run=0
env_args=()
mpirun_extra=()
while [ $# -gt 0 ]; do
  case $1 in
    -n | --ranks-per-node) need_value "$@"; ranks_per_node=$2; shift 2 ;;
    -H | --hosts) need_value "$@"; hosts=$2; shift 2 ;;
    --hostfile) need_value "$@"; hostfile=$2; shift 2 ;;
    --bind) need_value "$@"; bind=$2; shift 2 ;;
    --run-dir) need_value "$@"; run_dir=$2; shift 2 ;;
    --command) need_value "$@"; read -r -a command <<<"$2"; shift 2 ;;
    --nccl-debug) need_value "$@"; env_args+=("NCCL_DEBUG=$2"); shift 2 ;;
    --nccl-ifname) need_value "$@"; env_args+=("NCCL_SOCKET_IFNAME=$2"); shift 2 ;;
    --nccl-ib-hca) need_value "$@"; env_args+=("NCCL_IB_HCA=$2"); shift 2 ;;
    -x | --env) need_value "$@"; env_args+=("$2"); shift 2 ;;
    --mpirun-arg) need_value "$@"; mpirun_extra+=("$2"); shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage 0 ;;
    --) shift; break ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || usage 2
config=$1
shift
[ -f "$config" ] || die "no config file '$config'"

if [ -z "$ranks_per_node" ]; then
  # One rank per GPU; a machine without GPUs runs one CPU rank unless told otherwise.
  ranks_per_node=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "${ranks_per_node:-0}" -gt 0 ] || ranks_per_node=1
fi
[[ $ranks_per_node =~ ^[1-9][0-9]*$ ]] || die "--ranks-per-node must be a positive integer, not '$ranks_per_node'"
case $bind in none | core | socket | numa) ;; *) die "--bind must be none, core, socket or numa, not '$bind'" ;; esac
[ -z "$hosts" ] || [ -z "$hostfile" ] || die "give --hosts or --hostfile, not both"

mpirun_args=()
if [ -n "$hosts" ]; then
  IFS=, read -r -a host_list <<<"$hosts"
  nodes=${#host_list[@]}
  # host:slots, so that exactly ranks_per_node ranks fit on each.
  mpirun_args+=(-H "$(printf "%s:$ranks_per_node," "${host_list[@]}" | sed 's/,$//')")
elif [ -n "$hostfile" ]; then
  [ -f "$hostfile" ] || die "no hostfile '$hostfile'"
  nodes=$(sed 's/#.*//' "$hostfile" | awk 'NF > 0' | wc -l)
  [ "$nodes" -gt 0 ] || die "hostfile '$hostfile' names no host"
  mpirun_args+=(--hostfile "$hostfile")
else
  nodes=1
fi
world=$((nodes * ranks_per_node))
mpirun_args=(-np "$world" --map-by "ppr:$ranks_per_node:node" --bind-to "$bind" "${mpirun_args[@]}")

# Variables every rank needs, on every node: mpirun copies the environment only to local ranks.
export RINGATTN_WORLD_SIZE=$world
forward=(RINGATTN_WORLD_SIZE)
for name in OPENBLAS_NUM_THREADS OMP_NUM_THREADS $(compgen -v NCCL_ || true); do
  [ -n "${!name+set}" ] && forward+=("$name")
done
for assignment in "${env_args[@]}"; do
  name=${assignment%%=*}
  [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "bad variable '$assignment' for --env"
  if [[ $assignment == *=* ]]; then export "${assignment?}"; fi
  forward+=("$name")
done
# Each name once, in order.
mapfile -t forward < <(printf '%s\n' "${forward[@]}" | awk '!seen[$0]++')
for name in "${forward[@]}"; do mpirun_args+=(-x "$name"); done

[ ${#command[@]} -gt 0 ] || die "--command needs a subcommand (train, eval, \"bench train\", ...)"
ringattn_args=("${command[@]}" --config "$config")
[ -z "$run_dir" ] || ringattn_args+=(--set "run_dir=$run_dir")
cmd=("${MPIRUN:-mpirun}" "${mpirun_args[@]}" "${mpirun_extra[@]}" "$RINGATTN_BUILD/bin/ringattn"
  "${ringattn_args[@]}" "$@")

# The command exactly as run, with the exported values it depends on.
for name in "${forward[@]}"; do printf '%s=%q ' "$name" "${!name}"; done
printf '%q ' "${cmd[@]}"
echo
[ "$dry_run" = 0 ] || exit 0
[ -x "$RINGATTN_BUILD/bin/ringattn" ] || die "no executable $RINGATTN_BUILD/bin/ringattn (build first, or set RINGATTN_BUILD)"
[ -z "$run_dir" ] || mkdir -p "$run_dir"
exec "${cmd[@]}"

#!/usr/bin/env bash
# The real Slurm test: a one-node Slurm cluster on localhost runs scripts/slurm/train.sbatch twice.
#   1. installs Debian's slurm-wlm and munge when missing (apt-get; needs root, as everything here),
#   2. starts a private munged, slurmctld and slurmd (their own config, state, sockets, ports and
#      logs in a temporary directory; /etc is not touched, and a cluster already running on the
#      machine is left alone),
#   3. submits train.sbatch with configs/slurm_test.json on 4 tasks (the node declares 8 CPUs,
#      whatever the machine has) and checks the job log and the checkpoints it wrote,
#   4. submits it again on the same run directory with more steps, and checks from the log that it
#      resumed from the first job's newest checkpoint and went on to the end,
#   5. submits a long run on the same directory and, once it trains, sends SIGTERM to its ranks
#      (what --signal=TERM@300 does before the time limit): it must resume from step 6, write a
#      checkpoint and exit 0,
#   6. stops what it started (trap on exit, also on failure or Ctrl-C).
# On failure it prints the job log and the daemons' logs. About 30 s on 2 cores (plus about 20 s
# to install the packages).
#
#   scripts/slurm/test-local.sh           # uses $RINGATTN_BUILD/bin/ringattn (default build/)
#   RINGATTN_BUILD=$PWD/build-slurm scripts/slurm/test-local.sh
#   KEEP=1 scripts/slurm/test-local.sh    # keep the temporary directory (logs, run directory)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
export RINGATTN_BUILD=${RINGATTN_BUILD:-$root/build}
bin=$RINGATTN_BUILD/bin/ringattn
job_timeout_s=${SLURM_TEST_JOB_TIMEOUT_S:-150}
ctld_port=${SLURM_TEST_PORT:-16817}
start_s=$SECONDS

say() { echo "[slurm-test $((SECONDS - start_s))s] $*"; }
die() {
  echo "[slurm-test] FAILED: $*" >&2
  exit 1
}

[ -x "$bin" ] || die "no executable $bin (build first, or set RINGATTN_BUILD)"
[ "$(id -u)" = 0 ] || die "run as root: it installs packages and runs slurmd, which starts jobs as any user"

# --- 1. packages ---------------------------------------------------------------------------------
missing=()
for tool in slurmctld slurmd sbatch munged; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing slurm-wlm and munge (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Debian's postinst scripts may try to start the services; without an init system that only
  # warns, and this script starts its own daemons anyway.
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
for tool in slurmctld slurmd sbatch srun squeue scontrol sinfo munged mungekey; do
  command -v "$tool" >/dev/null || die "$tool not found after installing slurm-wlm and munge"
done

# --- 2. a private cluster ------------------------------------------------------------------------
work=$(mktemp -d /tmp/ringattn-slurm.XXXXXX)
# munged wants its socket directory searchable by all (everything here runs as root anyway).
chmod 755 "$work"
pids=()
jobs_submitted=()
cleanup() {
  local rc=$?
  set +e
  [ ${#jobs_submitted[@]} -gt 0 ] && scancel "${jobs_submitted[@]}" 2>/dev/null
  # slurmd first (it ends leftover job steps), then the controller, then munged.
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null
    for _ in $(seq 50); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.1; done
    kill -9 "${pids[i]}" 2>/dev/null
    wait "${pids[i]}" 2>/dev/null
  done
  if [ "${KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
    echo "[slurm-test] kept $work (logs, configs, run directory)"
  else
    rm -rf "$work"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

dump_logs() {
  local f
  for f in "$work"/job-*.out "$work"/slurmctld.log "$work"/slurmd.log "$work"/munged.log; do
    [ -f "$f" ] || continue
    echo "----- $f (last 60 lines) -----"
    tail -n 60 "$f"
  done
}
fail() {
  echo "[slurm-test] FAILED: $*" >&2
  dump_logs
  exit 1
}

host=$(hostname -s)
mkdir -p "$work/ctld" "$work/slurmd"
cat >"$work/slurm.conf" <<EOF
# Written by scripts/slurm/test-local.sh: one node on localhost, private state and ports.
ClusterName=ringattn-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$((ctld_port + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$work/munge.sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$work/ctld
SlurmdSpoolDir=$work/slurmd
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: plain process tracking works in containers and on CI runners.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# The node may declare more CPUs than the machine has, so 4 tasks fit on 2 cores.
SlurmdParameters=config_overrides
KillWait=10
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=8 Sockets=1 CoresPerSocket=8 ThreadsPerCore=1 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$work/slurm.conf

say "starting munged, slurmctld, slurmd in $work"
mungekey --create --keyfile="$work/munge.key" >/dev/null 2>&1 ||
  dd if=/dev/urandom of="$work/munge.key" bs=1024 count=1 status=none
chmod 600 "$work/munge.key"
# --force: munged refuses root and /tmp-based paths otherwise.
munged --foreground --force --socket="$work/munge.sock" --key-file="$work/munge.key" \
  --pid-file="$work/munged.pid" --log-file="$work/munged.log" --seed-file="$work/munge.seed" \
  >>"$work/munged.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [ -S "$work/munge.sock" ] && break; sleep 0.1; done
[ -S "$work/munge.sock" ] || fail "munged did not start"
slurmctld -D -f "$work/slurm.conf" >>"$work/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$work/slurm.conf" -N "$host" >>"$work/slurmd.out" 2>&1 &
pids+=($!)

node_state=""
for _ in $(seq 60); do
  node_state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
  [ "$node_state" = idle ] && break
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || fail "a daemon exited at start (pid $pid)"; done
  sleep 0.5
done
[ "$node_state" = idle ] || fail "node not idle after 30 s (state: '${node_state}')"
say "cluster up: node $host idle; srun --mpi=list: $(srun --mpi=list 2>&1 | tr -s ' \n' ' ')"

# --- 3. and 4. the jobs --------------------------------------------------------------------------
run_dir=$work/run
# submit STEPS [ringattn options]: train.sbatch on 4 tasks, 1 CPU each, no GPUs; prints the job id.
submit() {
  local steps=$1
  shift
  sbatch --parsable --job-name=ringattn-slurm-test --nodes=1 --ntasks-per-node=4 \
    --cpus-per-task=1 --gpus-per-node=0 --time=10:00 --output="$work/job-%j.out" \
    --export="ALL,RINGATTN_RUN_DIR=$run_dir,OPENBLAS_NUM_THREADS=1" \
    scripts/slurm/train.sbatch configs/slurm_test.json --set "train.steps=$steps" "$@"
}
# wait_job ID: waits until the job ends (bounded) and fails unless it COMPLETED.
wait_job() {
  local id=$1 state="" deadline=$((SECONDS + job_timeout_s))
  while [ $SECONDS -lt $deadline ]; do
    state=$(scontrol show job "$id" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 || true)
    case $state in
      COMPLETED) say "job $id completed"; return 0 ;;
      FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE | PREEMPTED)
        scontrol show job "$id" || true
        fail "job $id ended $state" ;;
    esac
    sleep 1
  done
  scontrol show job "$id" || true
  fail "job $id not done after ${job_timeout_s}s (state: ${state:-unknown})"
}
# expect FILE PATTERN WHAT: the file must match the extended regex.
expect() {
  grep -Eq -- "$2" "$1" || fail "$3: no line matching /$2/ in $1"
  say "ok: $3"
}

job1=$(submit 4) || fail "sbatch refused the first job"
jobs_submitted+=("$job1")
say "submitted job $job1 (train.steps=4, checkpoint every 2)"
wait_job "$job1"
log1=$work/job-$job1.out
expect "$log1" "\+ srun --mpi=pmix" "job $job1 launched its ranks with srun --mpi=pmix"
expect "$log1" "mesh: .*\(4 ranks\)" "job $job1 ran on a world of 4 ranks"
expect "$log1" "--resume: no complete checkpoint" "job $job1 started fresh with --resume"
expect "$log1" "checkpoint .*step_4" "job $job1 wrote its final checkpoint"
expect "$log1" "done: 4 steps" "job $job1 trained 4 steps"
[ -f "$run_dir/checkpoints/step_4/COMPLETE" ] || fail "no complete checkpoint $run_dir/checkpoints/step_4"
say "ok: complete checkpoint $run_dir/checkpoints/step_4 ($(find "$run_dir/checkpoints/step_4" -type f | wc -l) files)"

job2=$(submit 6) || fail "sbatch refused the second job"
jobs_submitted+=("$job2")
say "submitted job $job2 (same run directory, train.steps=6)"
wait_job "$job2"
log2=$work/job-$job2.out
expect "$log2" "resumed from .*step_4 \(step 4" "job $job2 resumed from job $job1's checkpoint"
expect "$log2" "done: 6 steps" "job $job2 trained on to step 6"
[ -f "$run_dir/checkpoints/step_6/COMPLETE" ] || fail "no complete checkpoint $run_dir/checkpoints/step_6"
say "ok: complete checkpoint $run_dir/checkpoints/step_6"
# Both jobs append to one metrics file: one line per step, none repeated by the resumed job.
steps=$(grep -o '"step":[0-9]*' "$run_dir/metrics.jsonl" | cut -d: -f2 | tr '\n' ' ')
[ "$steps" = "1 2 3 4 5 6 " ] || fail "metrics.jsonl steps are '$steps', expected 1 to 6 once each"
say "ok: metrics.jsonl has steps $steps"

# --- 5. SIGTERM to the job step ---------------------------------------------------------------
# What --signal=TERM@300 does before the time limit, now: scancel --signal without --batch/--full
# signals the job step's tasks (every rank), not the batch script. The ranks must finish their
# step, write a checkpoint and exit 0, so the job completes instead of failing.
job3=$(submit 100000 --set checkpoint.every=100000) || fail "sbatch refused the third job"
jobs_submitted+=("$job3")
say "submitted job $job3 (same run directory, train.steps=100000), to be stopped by SIGTERM"
deadline=$((SECONDS + job_timeout_s))
last=6
until [ "$last" -gt 7 ]; do
  [ $SECONDS -lt $deadline ] || fail "job $job3 logged no step after 7 within ${job_timeout_s}s"
  state=$(scontrol show job "$job3" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 || true)
  case $state in PENDING | RUNNING | CONFIGURING | "") ;; *) fail "job $job3 ended $state before the signal" ;; esac
  sleep 1
  last=$(grep -o '"step":[0-9]*' "$run_dir/metrics.jsonl" | tail -1 | cut -d: -f2)
done
scancel --signal=TERM "$job3" || fail "scancel --signal=TERM $job3 failed"
say "sent SIGTERM to the ranks of job $job3 at step $last"
wait_job "$job3"
log3=$work/job-$job3.out
expect "$log3" "resumed from .*step_6 \(step 6" "job $job3 resumed from job $job2's checkpoint"
expect "$log3" "the training step exited with 0" "job $job3's ranks exited 0 on SIGTERM"
newest=$(find "$run_dir/checkpoints" -maxdepth 2 -name COMPLETE | sed 's|.*/step_\([0-9]*\)/COMPLETE|\1|' | sort -n | tail -1)
[ "${newest:-0}" -gt 7 ] || fail "no checkpoint written on SIGTERM (newest complete: step_${newest:-none})"
say "ok: job $job3 wrote checkpoint step_$newest on SIGTERM"

say "PASSED in $((SECONDS - start_s)) s"

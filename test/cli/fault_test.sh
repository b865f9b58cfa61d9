#!/usr/bin/env bash
# Faults during training, end to end (docs/reliability.md lists each with what the user sees):
# preemption signals, a rank killed or stopped (the comm watchdog), a writer killed in the middle
# of a checkpoint save, corrupted checkpoint files, non-finite gradients. Faults are injected
# with real signals, or with RINGATTN_DEBUG_FAULTS (core/debug_faults.h) where a fixed step is
# needed. Every interrupted run must leave a checkpoint that loads and resumes bit-exactly.
# Usage: fault_test.sh path/to/ringattn
set -uo pipefail
bin=${1:?usage: fault_test.sh RINGATTN_BINARY}
# shellcheck source=test/cli/lib.sh
source "$(dirname "$0")/lib.sh"
unset RINGATTN_DEBUG_FAULTS
cleanup() {
  # Leave no rank behind, whatever failed (only the processes this script started).
  for p in ${bg_pids:-}; do kill -9 "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
bg_pids=""
check() { # check NAME CONDITION-COMMAND...
  local name=$1
  shift
  if "$@"; then pass "$name"; else fail "$name"; fi
}

cfgdir=$(cd "$(dirname "$0")/../../configs" && pwd)
# Tiny model, 8 steps, a checkpoint every 2; peak_tflops set so no sgemm is measured at start.
base=(--config "$cfgdir/tiny.json" --set train.seq_len=128 --set train.steps=8
  --set checkpoint.every=2 --set checkpoint.keep_last=0 --set eval.every=0 --set peak_tflops=1
  --set comm.timeout_s=3)
train() { # train NP RUN_DIR [ARGS...]
  local np=$1 dir=$2
  shift 2
  mpirun -np "$np" "$bin" train "${base[@]}" --set run_dir="$dir" "$@"
}
losses() { grep -o '"loss":[^,]*' "$1/metrics.jsonl"; }
lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }
# wait_lines FILE N: until FILE has N lines (at most 60 s).
wait_lines() {
  local i
  for i in $(seq 1 600); do
    [ "$(lines "$1")" -ge "$2" ] && return 0
    sleep 0.1
  done
  return 1
}
# The rank processes of an mpirun (its children).
ranks_of() { pgrep -P "$1"; }
same_weights() { cmp -s "$1/checkpoints/step_8/model.safetensors" "$ref/checkpoints/step_8/model.safetensors"; }
same_losses() { diff <(losses "$1") <(losses "$ref") >/dev/null; }

# The reference: 8 steps uninterrupted.
ref=$tmp/ref
train 2 "$ref" >"$tmp/ref.log" 2>&1 && pass "reference run" || fail "reference run: $(tail -3 "$tmp/ref.log")"

# --- Preemption ---------------------------------------------------------------------------------
# A stop request on rank 1 only (as when a signal reaches one process) after step 3: every rank
# stops after step 3, checkpoints it and exits 0.
run=$tmp/stop1
out=$(RINGATTN_DEBUG_FAULTS=stop_step=3,stop_rank=1 train 2 "$run" 2>&1)
rc=$?
check "stop request on one rank: exit 0" [ $rc -eq 0 ]
check "stop request: says so" grep -q "stopping after step 3 as asked by a signal" <<<"$out"
check "stop request: checkpoint of step 3" [ -f "$run/checkpoints/step_3/COMPLETE" ]
check "stop request: no step after 3" [ "$(lines "$run/metrics.jsonl")" -eq 3 ]
train 2 "$run" --resume >"$tmp/resume.log" 2>&1 && pass "resume after stop" || fail "resume after stop: $(tail -3 "$tmp/resume.log")"
check "resume after stop: weights == uninterrupted (bitwise)" same_weights "$run"
check "resume after stop: losses == uninterrupted" same_losses "$run"

# A second job on a run directory while a job trains there is refused, naming the holder; the
# first one goes on (then stops at SIGUSR1, slow steps so that it is still running meanwhile).
run=$tmp/locked
RINGATTN_DEBUG_FAULTS=step_sleep_ms=400 mpirun -np 2 "$bin" train "${base[@]}" --set run_dir="$run" \
  >"$tmp/locked.log" 2>&1 &
mp=$!
bg_pids="$bg_pids $mp"
wait_lines "$run/metrics.jsonl" 1
out=$(train 2 "$run" --resume 2>&1)
[ $? -ne 0 ] && grep -q "run_dir '$run' is in use by another training job (pid [0-9]* on " <<<"$out" &&
  pass "a second job on a run_dir in use is refused" ||
  fail "a second job on a run_dir in use: $(tail -3 <<<"$out")"
kill -USR1 $mp
wait $mp
check "... and the first job goes on to its stop, exit 0" [ $? -eq 0 ]

# Real signals while training runs (slow steps so the signal lands mid-run): SIGTERM to one rank
# process, SIGUSR1 to mpirun (which forwards it to every rank).
for sig in TERM USR1; do
  run=$tmp/sig$sig
  # mpirun itself in the background (not a function, whose subshell $! would name).
  RINGATTN_DEBUG_FAULTS=step_sleep_ms=150 mpirun -np 2 "$bin" train "${base[@]}" --set run_dir="$run" \
    >"$tmp/sig.log" 2>&1 &
  mp=$!
  bg_pids="$bg_pids $mp"
  wait_lines "$run/metrics.jsonl" 2
  if [ $sig = TERM ]; then kill -TERM "$(ranks_of $mp | tail -1)"; else kill -USR1 $mp; fi
  wait $mp
  rc=$?
  check "SIG$sig mid-run: exit 0" [ $rc -eq 0 ]
  stopped=$(lines "$run/metrics.jsonl")
  check "SIG$sig mid-run: stopped early with a checkpoint (step $stopped)" \
    [ "$stopped" -lt 8 -a -f "$run/checkpoints/step_$stopped/COMPLETE" ]
  grep -q "stopped by a signal at step $stopped" "$tmp/sig.log" && pass "SIG$sig: says so" ||
    fail "SIG$sig: says so: $(tail -3 "$tmp/sig.log")"
  train 2 "$run" --resume >"$tmp/resume.log" 2>&1 && pass "SIG$sig: resume" || fail "SIG$sig: resume: $(tail -3 "$tmp/resume.log")"
  check "SIG$sig: resumed weights == uninterrupted (bitwise)" same_weights "$run"
  check "SIG$sig: resumed losses == uninterrupted" same_losses "$run"
done

# --- Dead or stopped ranks ------------------------------------------------------------------------
# One rank of four is killed (SIGKILL) or stopped (SIGSTOP) mid-run: every process must be gone
# within comm.timeout_s (3 s) plus a margin, the job must fail, and the last complete checkpoint
# must still load and resume.
for sig in KILL STOP; do
  run=$tmp/dead$sig
  RINGATTN_DEBUG_FAULTS=step_sleep_ms=100 mpirun -np 4 "$bin" train "${base[@]}" --set run_dir="$run" \
    --set train.steps=1000 >"$tmp/dead.log" 2>&1 &
  mp=$!
  bg_pids="$bg_pids $mp"
  wait_lines "$run/metrics.jsonl" 3
  all=$(ranks_of $mp | tr '\n' ' ')
  victim=$(echo $all | cut -d' ' -f3)
  bg_pids="$bg_pids $all"
  t0=$(date +%s)
  kill -$sig "$victim"
  gone=no
  for i in $(seq 1 150); do # 15 s: timeout 3 s, abort and teardown
    if ! kill -0 $mp 2>/dev/null; then
      gone=yes
      break
    fi
    sleep 0.1
  done
  wait $mp
  rc=$?
  check "SIG$sig of one rank: job ended within 15 s (took $(($(date +%s) - t0)) s)" [ $gone = yes ]
  check "SIG$sig of one rank: non-zero exit ($rc)" [ $rc -ne 0 ]
  # mpirun's teardown sends SIGCONT, SIGTERM and, a second later, SIGKILL to its ranks.
  for i in $(seq 1 50); do
    left=$(ps -o pid= -p "$(echo $all | tr ' ' ,)" 2>/dev/null | tr -d ' \n')
    [ -z "$left" ] && break
    sleep 0.1
  done
  check "SIG$sig of one rank: no process left ($left)" [ -z "$left" ]
  if [ $sig = STOP ]; then
    grep -q "comm watchdog: rank .* blocked for .* comm.timeout_s = 3 s" "$tmp/dead.log" &&
      pass "SIGSTOP: the watchdog names the rank and operation" ||
      fail "SIGSTOP: the watchdog names the rank and operation: $(tail -5 "$tmp/dead.log")"
  fi
  last=$(ls -d "$run"/checkpoints/step_* 2>/dev/null | grep -v '\.tmp$' | sort -t_ -k2 -n | tail -1)
  out=$(mpirun -np 2 "$bin" eval "${base[@]}" --set run_dir="$run" --checkpoint "$last" 2>&1) &&
    pass "SIG$sig: last checkpoint $(basename "$last") evaluates" || fail "SIG$sig: eval of $last: $(tail -3 <<<"$out")"
  out=$(train 4 "$run" --set train.steps=$(($(basename "$last" | cut -d_ -f2) + 1)) --resume 2>&1)
  grep -q "resumed from $last" <<<"$out" && pass "SIG$sig: resumes from it" || fail "SIG$sig: resume: $(tail -3 <<<"$out")"
done

# A rank that stops after the job's last collective (its checkpoint saved), before MPI_Finalize:
# the others wait in MPI_Finalize, which the watchdog watches too (it hung for ever).
run=$tmp/exitstop
start=$SECONDS
out=$(RINGATTN_DEBUG_FAULTS=exit_stop_rank=1 timeout 60 mpirun -np 2 "$bin" train "${base[@]}" --set run_dir="$run" 2>&1)
rc=$?
check "a rank stopped before MPI_Finalize: the job ends, failed" [ $rc -ne 0 -a $rc -ne 124 ]
check "... within the timeout and a margin" [ $((SECONDS - start)) -lt 45 ]
check "... the watchdog names the wait" grep -q "MPI_Finalize (waiting for every rank to end) blocked for" <<<"$out"
check "... the final checkpoint was saved" [ -f "$run/checkpoints/step_8/COMPLETE" ]

# --- A writer killed in the middle of a checkpoint save -------------------------------------------
run=$tmp/crash
out=$(RINGATTN_DEBUG_FAULTS=checkpoint_crash_step=4 train 2 "$run" 2>&1)
rc=$?
check "writer killed mid-save: job fails" [ $rc -ne 0 ]
check "writer killed mid-save: previous checkpoint intact" [ -f "$run/checkpoints/step_2/COMPLETE" ]
check "writer killed mid-save: the partial one is a .tmp" [ -d "$run/checkpoints/step_4.tmp" -a ! -e "$run/checkpoints/step_4" ]
out=$("$bin" eval "${base[@]}" --set run_dir="$run" --checkpoint "$run/checkpoints/step_4.tmp" 2>&1)
[ $? -ne 0 ] && grep -q "step_4.tmp' is incomplete: it has no COMPLETE marker" <<<"$out" &&
  pass "eval of the partial checkpoint: refused" || fail "eval of the partial checkpoint: $(tail -2 <<<"$out")"
out=$("$bin" eval "${base[@]}" --set run_dir="$run" 2>&1)
grep -q "eval of $run/checkpoints/step_2 " <<<"$out" && pass "eval picks the previous complete checkpoint" ||
  fail "eval picks the previous complete checkpoint: $(tail -2 <<<"$out")"
out=$(train 2 "$run" --resume 2>&1)
grep -q "resumed from $run/checkpoints/step_2 " <<<"$out" && pass "resume ignores the partial checkpoint" ||
  fail "resume ignores the partial checkpoint: $(tail -3 <<<"$out")"
check "the next save removed the partial checkpoint" [ ! -e "$run/checkpoints/step_4.tmp" ]
check "resumed after the crash: weights == uninterrupted (bitwise)" same_weights "$run"

# --- A full disk ---------------------------------------------------------------------------------
# No room for the save of step 6 (RINGATTN_DEBUG_FAULTS=checkpoint_free_kib: what the file system
# reports): warned before the first step, then refused before anything is written, on every rank
# together; the checkpoint of step 4 and the metrics stay, and a resume with room is bit-exact.
# (A real full tmpfs gives the same messages: docs/reliability.md.)
run=$tmp/full
RINGATTN_DEBUG_FAULTS=stop_step=4 train 2 "$run" >"$tmp/full.log" 2>&1
check "full disk: a run stopped after step 4" [ -f "$run/checkpoints/step_4/COMPLETE" ]
out=$(RINGATTN_DEBUG_FAULTS=checkpoint_free_kib=100 train 2 "$run" --resume 2>&1)
rc=$?
check "full disk: job fails" [ $rc -ne 0 ]
check "full disk: warned before the first step" grep -q "'$run/checkpoints' has 100.0 KiB free, and this run will need about .* (2 more checkpoints of about .*): a save will probably fail for lack of space" <<<"$out"
check "full disk: the error names the room needed and what is kept" grep -q "checkpoint of step 6 not saved: ranks 0-1 need about .* in all in '$run/checkpoints', and the file system has 100.0 KiB free; the newest complete checkpoint, '$run/checkpoints/step_4', is kept; make room or fix the directory, then continue with --resume" <<<"$out"
check "full disk: said once for the two ranks that share the file system" [ "$(grep -c "checkpoint of step 6 not saved" <<<"$out")" -eq 1 ]
check "full disk: nothing of step 6 is left" [ ! -e "$run/checkpoints/step_6" -a ! -e "$run/checkpoints/step_6.tmp" ]
check "full disk: step 4 intact" [ -f "$run/checkpoints/step_4/COMPLETE" ]
check "full disk: metrics up to step 6 kept" [ "$(lines "$run/metrics.jsonl")" -eq 6 ]
out=$(train 2 "$run" --resume 2>&1)
grep -q "resumed from $run/checkpoints/step_4 " <<<"$out" && pass "full disk: resumes once there is room" ||
  fail "full disk: resume: $(tail -3 <<<"$out")"
check "full disk: resumed: weights == uninterrupted (bitwise)" same_weights "$run"
check "full disk: resumed: losses == uninterrupted" same_losses "$run"

# A write that fails on rank 1 only (RINGATTN_DEBUG_FAULTS=checkpoint_write_fail_rank): every
# rank fails together (none waits for the others until the watchdog), rank 1 says why, rank 0
# points at it, the partial step_2.tmp is removed.
run=$tmp/writefail
out=$(RINGATTN_DEBUG_FAULTS=checkpoint_write_fail_rank=1 timeout 60 mpirun -np 2 "$bin" train "${base[@]}" \
  --set run_dir="$run" --set comm.timeout_s=600 2>&1)
rc=$?
check "write error on one rank: job fails, before the watchdog" [ $rc -ne 0 -a $rc -ne 124 ]
check "write error on one rank: that rank says why" grep -q "checkpoint of step 2 not saved: safetensors file '$run/checkpoints/step_2.tmp/optim_rank1.safetensors.tmp': write failed: injected by RINGATTN_DEBUG_FAULTS; there is no earlier complete checkpoint" <<<"$out"
check "write error on one rank: the others point at it" grep -q "checkpoint of step 2 not saved: rank 1 failed while writing its files (its message says why)" <<<"$out"
check "write error on one rank: no partial directory left" [ ! -e "$run/checkpoints/step_2.tmp" -a ! -e "$run/checkpoints/step_2" ]

# --- Corrupted and truncated checkpoint files ----------------------------------------------------
# Byte flips and truncation in each kind of file: the load names the file.
corrupt() { # corrupt NAME FILE-IN-STEP_8 HOW PATTERN
  local name=$1 file=$2 how=$3 pattern=$4
  rm -rf "$tmp/c" && cp -r "$ref" "$tmp/c"
  local f=$tmp/c/checkpoints/step_8/$file
  case $how in
    flip) printf '\xff' | dd of="$f" bs=1 seek=$(($(stat -c %s "$f") / 2)) conv=notrunc 2>/dev/null ;;
    truncate) truncate -s $(($(stat -c %s "$f") - 100)) "$f" ;;
    remove) rm -f "$f" ;;
  esac
  local out rc
  out=$(mpirun -np 2 "$bin" train "${base[@]}" --set run_dir="$tmp/c" --set train.steps=10 --resume 2>&1)
  rc=$?
  if [ $rc -ne 0 ] && grep -q -- "$pattern" <<<"$out"; then pass "$name"; else fail "$name (exit $rc): $(tail -3 <<<"$out")"; fi
}
corrupt "flipped byte in optim_rank0.safetensors" optim_rank0.safetensors flip "optim_rank0.safetensors' is corrupted: checksum"
corrupt "truncated optim_rank1.safetensors" optim_rank1.safetensors truncate "optim_rank1.safetensors' is truncated or damaged"
corrupt "flipped byte in state.json" state.json flip "state.json' is corrupted"
corrupt "missing optim_rank1.safetensors" optim_rank1.safetensors remove "optim_rank1.safetensors' is missing"
rm -rf "$tmp/c" && cp -r "$ref" "$tmp/c"
f=$tmp/c/checkpoints/step_8/model.safetensors
printf '\x00' | dd of="$f" bs=1 seek=5000 conv=notrunc 2>/dev/null
out=$("$bin" eval "${base[@]}" --set run_dir="$tmp/c" 2>&1)
[ $? -ne 0 ] && grep -q "model.safetensors' is corrupted: checksum" <<<"$out" &&
  pass "eval: flipped byte in model.safetensors" || fail "eval: flipped byte in model.safetensors: $(tail -2 <<<"$out")"

# --- Non-finite gradients -------------------------------------------------------------------------
run=$tmp/nan
out=$(RINGATTN_DEBUG_FAULTS=nan_grad_step=3,nan_grad_rank=1 train 2 "$run" --set on_nonfinite=skip 2>&1)
check "NaN gradient, on_nonfinite = skip: exit 0" [ $? -eq 0 ]
check "skip: the step is logged as skipped" grep -q "step 3/8 .* SKIPPED (non-finite; 1 so far)" <<<"$out"
check "skip: metrics marks step 3" grep -q '"step":3,.*"skipped":true,"skipped_steps":1' "$run/metrics.jsonl"
check "skip: metrics counts 1 skipped step at the end" grep -q '"step":8,.*"skipped_steps":1' "$run/metrics.jsonl"
check "skip: the final summary counts it" grep -q "done: 8 steps (1 skipped as non-finite)" <<<"$out"
out=$(RINGATTN_DEBUG_FAULTS=nan_grad_step=3 train 2 "$tmp/nan2" --set on_nonfinite=abort 2>&1)
rc=$?
[ $rc -ne 0 ] && grep -q "step 3: non-finite gradient (loss .*, gradient norm nan); stopping as on_nonfinite = abort" <<<"$out" &&
  pass "NaN gradient, on_nonfinite = abort: clear error, non-zero exit" || fail "on_nonfinite = abort (exit $rc): $(tail -3 <<<"$out")"
check "abort: the checkpoint of step 2 is intact" [ -f "$tmp/nan2/checkpoints/step_2/COMPLETE" ]

cli_summary

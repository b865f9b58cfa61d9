#!/usr/bin/env bash
# End-to-end checks of the ringattn executable: the attention check tool on 1, 2 and 4 ranks
# against one another, and bad input that must end with one clear message and a non-zero exit.
# Usage: cli_test.sh path/to/ringattn
set -uo pipefail
bin=${1:?usage: cli_test.sh RINGATTN_BINARY}
# shellcheck source=test/cli/lib.sh
source "$(dirname "$0")/lib.sh"
unset RINGATTN_DEBUG_FAULTS  # the group-of-one check below sets it itself

"$bin" --version | grep -q "CUDA backend" && pass "--version" || fail "--version"

expect_ok "make input" "$bin" attention --make-input "$tmp/in.safetensors" --batch 2 --seq 64 \
  --heads 4 --kv-heads 2 --head-dim 16 --with-grad --segments 3
expect_ok "blockwise on 1 rank" "$bin" attention --input "$tmp/in.safetensors" \
  --output "$tmp/bw.safetensors" --impl blockwise --causal --q-chunk 16 --k-chunk 8
expect_ok "vanilla on 1 rank" "$bin" attention --input "$tmp/in.safetensors" \
  --output "$tmp/van.safetensors" --impl vanilla --causal
expect_ok "vanilla == blockwise" "$bin" attention --compare "$tmp/van.safetensors" "$tmp/bw.safetensors" --tolerance 1e-5
# A result without the gradients does not agree with one that has them, in either order.
expect_ok "make input without do" "$bin" attention --make-input "$tmp/in_fwd.safetensors" --batch 2 \
  --seq 64 --heads 4 --kv-heads 2 --head-dim 16 --segments 3
expect_ok "vanilla forward only" "$bin" attention --input "$tmp/in_fwd.safetensors" \
  --output "$tmp/fwd.safetensors" --impl vanilla --causal
expect_error "forward only vs full: dq only in one" "dq: only in .*van.safetensors" "$bin" attention \
  --compare "$tmp/fwd.safetensors" "$tmp/van.safetensors"
printf '\x02\x00\x00\x00\x00\x00\x00\x00{}' >"$tmp/empty.safetensors"  # a valid file of no tensors
expect_error "an empty file agrees with nothing" "holds no tensors" "$bin" attention \
  --compare "$tmp/empty.safetensors" "$tmp/van.safetensors" --subset
expect_error "full vs forward only: dq only in one" "dq: only in .*van.safetensors" "$bin" attention \
  --compare "$tmp/van.safetensors" "$tmp/fwd.safetensors"
for np in 1 2 4; do
  for layout in contiguous zigzag striped; do
    expect_ok "ring np=$np $layout" mpirun -np $np "$bin" attention --input "$tmp/in.safetensors" \
      --output "$tmp/ring.safetensors" --impl ring --layout $layout --causal --q-chunk 16 --k-chunk 8
    expect_ok "ring np=$np $layout == blockwise" "$bin" attention --compare "$tmp/ring.safetensors" \
      "$tmp/bw.safetensors" --tolerance 1e-5
  done
done

# bf16 precision: ring on 2 ranks == blockwise on 1 (both bf16; the same roundings, other orders),
# and bf16 is not f32 (the flag reaches the tiles). --kernel fused runs the CPU's tiles here.
expect_ok "bf16 blockwise" "$bin" attention --input "$tmp/in.safetensors" \
  --output "$tmp/bw16.safetensors" --impl blockwise --causal --precision bf16 --kernel fused
expect_ok "bf16 ring np=2" mpirun -np 2 "$bin" attention --input "$tmp/in.safetensors" \
  --output "$tmp/ring16.safetensors" --impl ring --causal --precision bf16 --q-chunk 16 --k-chunk 8
expect_ok "bf16 ring == bf16 blockwise" "$bin" attention --compare "$tmp/ring16.safetensors" \
  "$tmp/bw16.safetensors" --tolerance 1e-2
expect_error "bf16 is not f32" "MISMATCH" "$bin" attention --compare "$tmp/bw16.safetensors" \
  "$tmp/bw.safetensors" --tolerance 1e-4
expect_error "fused needs bf16" "needs --precision bf16" "$bin" attention --input "$tmp/in.safetensors" \
  --output "$tmp/o.safetensors" --kernel fused
expect_error "missing input file" "nothere.safetensors" "$bin" attention --input "$tmp/nothere.safetensors" --output "$tmp/o.safetensors"
printf 'garbage' >"$tmp/bad.safetensors"
expect_error "malformed input file" "bad.safetensors" "$bin" attention --input "$tmp/bad.safetensors" --output "$tmp/o.safetensors"
head -c 500 "$tmp/in.safetensors" >"$tmp/trunc.safetensors"
expect_error "truncated input file" "trunc.safetensors" "$bin" attention --input "$tmp/trunc.safetensors" --output "$tmp/o.safetensors"
expect_error "unknown impl" "expected vanilla, blockwise or ring" "$bin" attention --input "$tmp/in.safetensors" --output "$tmp/o.safetensors" --impl fast
expect_error "unknown layout" "expected contiguous, zigzag or striped" "$bin" attention --input "$tmp/in.safetensors" --output "$tmp/o.safetensors" --layout diagonal
expect_error "length the layout cannot split" "must be a multiple of 6" mpirun -np 3 "$bin" attention --input "$tmp/in.safetensors" --output "$tmp/o.safetensors" --impl ring --layout zigzag
expect_error "blockwise on several ranks" "runs on one rank" mpirun -np 2 "$bin" attention --input "$tmp/in.safetensors" --output "$tmp/o.safetensors" --impl blockwise
expect_error "missing tensor" "has no tensor 'q'" "$bin" attention --input "$tmp/bw.safetensors" --output "$tmp/o.safetensors"
expect_error "zero chunk" "--q-chunk: 0 is not a number >= 1" "$bin" attention --input "$tmp/in.safetensors" --output "$tmp/o.safetensors" --impl blockwise --q-chunk 0
expect_error "bench: bad kv heads" "--kv-heads (3) must be at least 1 and divide --heads (8)" "$bin" bench attention --heads 8 --kv-heads 3 --seq 64
expect_error "bench: zero kv heads" "--kv-heads: 0 is not a number >= 1" "$bin" bench attention --heads 8 --kv-heads 0 --seq 64
expect_error "bench: negative threads" "--threads: -1 is not a number >= 0" "$bin" bench train --threads -1
expect_error "bench: one step" "--steps: 1 is not a number >= 2" "$bin" bench train --steps 1
expect_error "bench: zero max length" "--max-seq-len: 0 is not a number >= 1" "$bin" bench max-context --max-seq-len 0
expect_error "bench: negative start" "--start: -5 is not a number >= 0" "$bin" bench max-context --start -5
expect_error "bench: zero length" "--seq-lens: 0 is not a number >= 1" "$bin" bench throughput --seq-lens 0
expect_error "eval: negative length" "--seq-lens: -8 is not a number >= 1" "$bin" eval --seq-lens -8
expect_error "forward: unknown impl" "--impl: foo not in {vanilla,blockwise,ring}" "$bin" forward --init-from x --tokens y --output z --impl foo

# Configs: each bad input ends with one clear message naming the key or file.
cfgdir=$(cd "$(dirname "$0")/../../configs" && pwd)
expect_ok "demo config validates on 4 ranks" "$bin" config --config "$cfgdir/demo.json" --world-size 4
printf '{"train": {"steps": 3,}}' >"$tmp/bad.json"
expect_error "malformed config" "bad.json" "$bin" config --config "$tmp/bad.json"
printf '{"train": {"seq_length": 1024}}' >"$tmp/unknown.json"
expect_error "unknown key suggests" "did you mean 'train.seq_len'" "$bin" config --config "$tmp/unknown.json"
expect_error "wrong type" "train.steps" "$bin" config --set train.steps=many
expect_error "mesh vs world size" "world" "$bin" config --config "$cfgdir/demo.json" --world-size 3

# Training: tiny model on 2 ranks (ring), checkpoints, resume bit for bit, eval, bad checkpoints.
train_cfg=("--config" "$cfgdir/tiny.json" --set train.seq_len=128 --set checkpoint.every=2 --set eval.every=2)
# The schedule depends on train.steps, so the interrupted run is a full 6-step run whose last
# checkpoint is removed: resuming from step_4 must rebuild step_6 bit for bit.
expect_ok "train 6 steps on 2 ranks" mpirun -np 2 "$bin" train "${train_cfg[@]}" --set run_dir="$tmp/runA" --set train.steps=6
[ "$(wc -l <"$tmp/runA/metrics.jsonl")" -eq 6 ] && pass "metrics.jsonl has 6 lines" || fail "metrics.jsonl has 6 lines"
grep -q '"val_loss"' "$tmp/runA/metrics.jsonl" && pass "metrics has val_loss" || fail "metrics has val_loss"
[ -f "$tmp/runA/checkpoints/step_6/COMPLETE" ] && pass "checkpoint step_6 complete" || fail "checkpoint step_6 complete"
cp "$tmp/runA/checkpoints/step_6/model.safetensors" "$tmp/straight.safetensors"
rm -rf "$tmp/runA/checkpoints/step_6"
expect_ok "resume from step 4 to 6" mpirun -np 2 "$bin" train "${train_cfg[@]}" --set run_dir="$tmp/runA" --set train.steps=6 --resume
[ "$(wc -l <"$tmp/runA/metrics.jsonl")" -eq 6 ] && pass "resume rewrites steps 5-6 of metrics.jsonl" ||
  fail "resume rewrites steps 5-6 of metrics.jsonl ($(wc -l <"$tmp/runA/metrics.jsonl") lines)"
cmp -s "$tmp/runA/checkpoints/step_6/model.safetensors" "$tmp/straight.safetensors" &&
  pass "resumed weights == straight weights (bitwise)" || fail "resumed weights == straight weights (bitwise)"
expect_error "eval of a missing checkpoint dir" "nothere" "$bin" eval "${train_cfg[@]}" --checkpoint "$tmp/nothere"
out=$("$bin" eval "${train_cfg[@]}" --set run_dir="$tmp/runA" --seq-lens 128,256 2>&1) &&
  grep -q "seq_len 256: val_loss .* exact answer accuracy" <<<"$out" &&
  pass "eval on 1 rank of a 2-rank checkpoint" || fail "eval on 1 rank of a 2-rank checkpoint: $(tail -3 <<<"$out")"
out=$("$bin" eval "${train_cfg[@]}" --checkpoint "$tmp/runA" 2>&1) &&
  grep -q "eval of $tmp/runA/checkpoints/step_6 (step 6)" <<<"$out" &&
  pass "eval --checkpoint of a run directory takes its newest checkpoint" ||
  fail "eval --checkpoint of a run directory: $(tail -3 <<<"$out")"
expect_error "resume on another mesh" "same mesh" "$bin" train "${train_cfg[@]}" --set run_dir="$tmp/runA" --set train.steps=8 --resume
printf 'x' | dd of="$tmp/runA/checkpoints/step_6/optim_rank1.safetensors" bs=1 seek=100 conv=notrunc 2>/dev/null
expect_error "corrupted checkpoint names the file" "optim_rank1.safetensors" mpirun -np 2 "$bin" train "${train_cfg[@]}" --set run_dir="$tmp/runA" --set train.steps=8 --resume
expect_error "eval without checkpoint" "no complete checkpoint" "$bin" eval "${train_cfg[@]}" --set run_dir="$tmp/empty"

# Launch check: MPI's world size must be what the launcher announced (a PMI mismatch between srun
# and MPI silently starts N one-rank jobs). -x sets a variable for the ranks only, not for mpirun.
expect_error "launch check: SLURM_NTASKS=3 in an srun step, 2 ranks" "SLURM_NTASKS=3 but MPI's world size is 2" \
  mpirun -np 2 -x SLURM_JOB_ID=1 -x SLURM_STEP_ID=0 -x SLURM_NTASKS=3 "$bin" train "${train_cfg[@]}" --set run_dir="$tmp/launch"
expect_error "launch check: a singleton in an srun step of 4" "SLURM_NTASKS=4 but MPI's world size is 1" \
  env SLURM_JOB_ID=1 SLURM_STEP_ID=0 SLURM_NTASKS=4 "$bin" train "${train_cfg[@]}" --set run_dir="$tmp/launch"
expect_error "launch check: RINGATTN_WORLD_SIZE" "RINGATTN_WORLD_SIZE=4 but MPI's world size is 2" \
  mpirun -np 2 -x RINGATTN_WORLD_SIZE=4 "$bin" config --config "$cfgdir/tiny.json"
expect_ok "launch check: SLURM_NTASKS of the batch script (no step) is not checked" \
  env SLURM_JOB_ID=1 SLURM_NTASKS=4 "$bin" config --config "$cfgdir/tiny.json"
[ ! -e "$tmp/launch" ] && pass "launch check: refused before writing anything" || fail "launch check: refused before writing anything"

# An FSDP group of one reads and adds in place; forced through the communicator (the debug fault
# fsdp_communicate_alone, core/debug_faults.h) it must give the same bits, in f32 and bf16.
for dt in f32 bf16; do
  one=("${train_cfg[@]}" --set train.steps=3 --set eval.every=0 --set checkpoint.every=3
    --set train.micro_batches=2 --set model.dtype=$dt --set model.tie_embeddings=true)
  expect_ok "group of one, $dt: in place" "$bin" train "${one[@]}" --set run_dir="$tmp/alone_$dt"
  expect_ok "group of one, $dt: through the communicator" env RINGATTN_DEBUG_FAULTS=fsdp_communicate_alone=1 \
    "$bin" train "${one[@]}" --set run_dir="$tmp/comm_$dt"
  if cmp -s "$tmp/alone_$dt/checkpoints/step_3/model.safetensors" "$tmp/comm_$dt/checkpoints/step_3/model.safetensors" &&
    cmp -s "$tmp/alone_$dt/checkpoints/step_3/optim_rank0.safetensors" "$tmp/comm_$dt/checkpoints/step_3/optim_rank0.safetensors"; then
    pass "group of one, $dt: the same weights and optimizer state, bit for bit"
  else
    fail "group of one, $dt: the same weights and optimizer state, bit for bit"
  fi
done

# A short run of a preset whose warm-up is longer than the run (allowed: it stays in warm-up).
expect_ok "short demo run, warm-up longer than the run" mpirun -np 4 "$bin" train --config "$cfgdir/demo.json" \
  --set train.steps=2 --set train.seq_len=512 --set run_dir="$tmp/short" --set eval.every=0 --set checkpoint.every=0

cli_summary

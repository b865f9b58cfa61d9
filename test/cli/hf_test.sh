#!/usr/bin/env bash
# End-to-end checks of Hugging Face import, forward and export through the executable, against
# the conformance fixture (test/data/hf_tiny, written by scripts/make-hf-fixture.py with
# transformers): `forward` on 1, 2 and 4 ranks with every attention implementation matches
# transformers' logits and loss; fine-tuning from the import with configs/finetune_hf.json runs
# and lowers the loss; export of a checkpoint, re-imported, gives transformers' logits bit for
# bit; bad input ends with one clear message.
# Usage: hf_test.sh path/to/ringattn path/to/test/data/hf_tiny
set -uo pipefail
bin=${1:?usage: hf_test.sh RINGATTN_BINARY FIXTURE_DIR}
fix=${2:?usage: hf_test.sh RINGATTN_BINARY FIXTURE_DIR}
root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=test/cli/lib.sh
source "$(dirname "$0")/lib.sh"

ref=$fix/reference.safetensors
compare() {  # compare NAME OUT TOLERANCE: OUT's tensors (logits, loss) against the reference
  expect_ok "$1" "$bin" attention --compare "$2" "$ref" --tolerance "$3" --subset
}

# forward: every implementation and rank count against transformers (1e-4 relative).
expect_ok "forward vanilla np=1" "$bin" forward --init-from "$fix" --tokens "$ref" \
  --output "$tmp/van.safetensors" --impl vanilla
compare "forward vanilla np=1 == transformers" "$tmp/van.safetensors" 1e-4
# The logits in GEMMs of model.loss_chunk rows (7: the last chunk shorter).
expect_ok "forward, logits 7 rows at a time" "$bin" forward --init-from "$fix" --tokens "$ref" \
  --output "$tmp/chunked.safetensors" --impl vanilla --set model.loss_chunk=7
compare "forward, logits 7 rows at a time == transformers" "$tmp/chunked.safetensors" 1e-4
for np in 2 4; do
  expect_ok "forward blockwise np=$np" mpirun -np $np "$bin" forward --init-from "$fix" \
    --tokens "$ref" --output "$tmp/bw.safetensors" --impl blockwise --set attention.q_chunk=8 \
    --set attention.k_chunk=8
  compare "forward blockwise np=$np == transformers" "$tmp/bw.safetensors" 1e-4
  for layout in zigzag striped; do
    expect_ok "forward ring np=$np $layout" mpirun -np $np "$bin" forward --init-from "$fix" \
      --tokens "$ref" --output "$tmp/ring.safetensors" --impl ring --layout $layout \
      --set attention.q_chunk=4 --set attention.k_chunk=4
    compare "forward ring np=$np $layout == transformers" "$tmp/ring.safetensors" 1e-4
  done
done
expect_ok "forward --loss ring np=4" mpirun -np 4 "$bin" forward --init-from "$fix" \
  --tokens "$ref" --output "$tmp/loss.safetensors" --impl ring --loss
compare "forward --loss == transformers" "$tmp/loss.safetensors" 1e-4
expect_ok "forward from a token file" mpirun -np 2 "$bin" forward --init-from "$fix" \
  --tokens "$fix/tokens.ratokens" --seq-len 256 --output "$tmp/tok.safetensors" --loss
# What forward does not use is said: a token file's tail shorter than a row, and a config mesh.
expect_output "forward says the token file's tail is not used" "the last 96 tokens are not used" \
  "$bin" forward --init-from "$fix" --tokens "$fix/tokens.ratokens" --seq-len 100 \
  --output "$tmp/tail.safetensors" --loss
expect_output "forward says mesh.* is not used" "mesh.\* of the config (dp=2 fsdp=1 sp=1 tp=1) is not used" \
  mpirun -np 2 "$bin" forward --init-from "$fix" --tokens "$ref" --output "$tmp/mesh.safetensors" \
  --loss --set mesh.dp=2 --set mesh.sp=1
expect_ok "forward on the bf16 shards" mpirun -np 2 "$bin" forward --init-from "$fix/bf16_sharded" \
  --tokens "$ref" --output "$tmp/bf16.safetensors"
compare "forward on the bf16 shards ~ transformers f32" "$tmp/bf16.safetensors" 5e-2

# Fine-tuning from the import with the long-context config (shrunk), on a ring of 2.
run=$tmp/run
expect_ok "finetune_hf.json on 2 ranks" mpirun -np 2 "$bin" train --config "$root/configs/finetune_hf.json" \
  --init-from "$fix" --set run_dir="$run" --set data.token_file="$fix/tokens.ratokens" \
  --set train.seq_len=256 --set train.steps=4 --set train.warmup_steps=1 --set optim.lr=3e-3 \
  --set optim.min_lr=3e-4 --set attention.q_chunk=32 --set attention.k_chunk=32 \
  --set checkpoint.every=4 --set eval.every=0 --set peak_tflops=1
if [ -f "$run/metrics.jsonl" ]; then
  first=$(head -1 "$run/metrics.jsonl" | grep -o '"loss": *[0-9.e+-]*' | head -1 | grep -o '[0-9.e+-]*$')
  last=$(tail -1 "$run/metrics.jsonl" | grep -o '"loss": *[0-9.e+-]*' | head -1 | grep -o '[0-9.e+-]*$')
  if awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }'; then
    pass "fine-tuning lowers the loss ($first -> $last)"
  else
    fail "fine-tuning lowers the loss ($first -> $last)"
  fi
else
  fail "fine-tuning wrote metrics.jsonl"
fi
expect_ok "eval --init-from" mpirun -np 2 "$bin" eval --config "$root/configs/finetune_hf.json" \
  --init-from "$fix" --set run_dir="$run" --set data.token_file="$fix/tokens.ratokens" \
  --set train.seq_len=256 --set eval.batches=1 --set attention.q_chunk=32 --set attention.k_chunk=32

# Export: a fine-tuned checkpoint loads back; an unchanged one (lr ~ 0) reproduces transformers'
# logits exactly, sharded or not.
expect_ok "export the fine-tuned run" "$bin" export --checkpoint "$run" --to "$tmp/hf_ft"
expect_ok "forward on the export" "$bin" forward --init-from "$tmp/hf_ft" --tokens "$ref" \
  --output "$tmp/ft.safetensors" --loss
run0=$tmp/run0
expect_ok "one step at lr 1e-30" mpirun -np 2 "$bin" train --config "$root/configs/finetune_hf.json" \
  --init-from "$fix" --set run_dir="$run0" --set data.token_file="$fix/tokens.ratokens" \
  --set train.seq_len=128 --set train.steps=1 --set optim.lr=1e-30 --set optim.min_lr=1e-30 \
  --set attention.q_chunk=32 --set attention.k_chunk=32 --set eval.every=0 --set peak_tflops=1
expect_ok "export f32" "$bin" export --checkpoint "$run0/checkpoints/step_1" --to "$tmp/hf0"
if cmp -s "$tmp/hf0/model.safetensors" "$fix/model.safetensors" 2>/dev/null ||
  "$bin" attention --compare "$tmp/hf0/model.safetensors" "$fix/model.safetensors" --tolerance 0 >/dev/null 2>&1; then
  pass "export then import is lossless (weights bit-equal to the fixture)"
else
  fail "export then import is lossless (weights bit-equal to the fixture)"
fi
expect_ok "export sharded" "$bin" export --checkpoint "$run0" --to "$tmp/hf0s" --shard-size 100KB
[ -f "$tmp/hf0s/model.safetensors.index.json" ] && pass "sharded export has an index" ||
  fail "sharded export has an index"
expect_ok "forward on the sharded export" mpirun -np 2 "$bin" forward --init-from "$tmp/hf0s" \
  --tokens "$ref" --output "$tmp/hf0s.safetensors" --impl ring
compare "forward on the sharded export == transformers" "$tmp/hf0s.safetensors" 1e-4
expect_ok "export bf16" "$bin" export --checkpoint "$run0" --to "$tmp/hf0b" --dtype bf16
grep -q '"torch_dtype": "bfloat16"' "$tmp/hf0b/config.json" && pass "bf16 export's config.json" ||
  fail "bf16 export's config.json"

# Bad input.
expect_error "missing model dir" "does not exist" "$bin" forward --init-from "$tmp/nothere" \
  --tokens "$ref" --output "$tmp/o.safetensors"
expect_error "a file as the model dir" "is a file; give the directory that holds config.json" "$bin" forward --init-from "$fix/config.json" \
  --tokens "$ref" --output "$tmp/o.safetensors"
mkdir -p "$tmp/noweights" && cp "$fix/config.json" "$tmp/noweights/"
expect_error "no weights" "has neither model.safetensors" "$bin" forward --init-from "$tmp/noweights" \
  --tokens "$ref" --output "$tmp/o.safetensors"
expect_error "ring does not split 30 tokens" "zigzag" mpirun -np 4 "$bin" forward --init-from "$fix" \
  --tokens "$fix/tokens.ratokens" --seq-len 30 --output "$tmp/o.safetensors"
mkdir -p "$tmp/small" && cp "$fix/model.safetensors" "$tmp/small/" &&
  sed 's/"vocab_size": 128/"vocab_size": 64/' "$fix/config.json" >"$tmp/small/config.json"
expect_error "token outside the vocabulary" "outside the model's vocabulary" "$bin" forward \
  --init-from "$tmp/small" --tokens "$fix/tokens.ratokens" --output "$tmp/o.safetensors"
mkdir -p "$tmp/wide" && cp "$fix/model.safetensors" "$tmp/wide/" &&
  sed 's/"intermediate_size": 96/"intermediate_size": 128/' "$fix/config.json" >"$tmp/wide/config.json"
expect_error "config.json does not match the weights" "gate_proj.weight' in '.*' has shape \[96, 64\], expected \[128, 64\]" \
  "$bin" forward --init-from "$tmp/wide" --tokens "$ref" --output "$tmp/o.safetensors"
expect_error "export of a non-checkpoint" "neither a checkpoint" "$bin" export --checkpoint "$tmp" \
  --to "$tmp/x"
expect_error "export dtype" "expected f32, bf16 or f16" "$bin" export --checkpoint "$run0" \
  --to "$tmp/x" --dtype f64
expect_error "export shard size" "is not a size" "$bin" export --checkpoint "$run0" --to "$tmp/x" \
  --shard-size lots

cli_summary

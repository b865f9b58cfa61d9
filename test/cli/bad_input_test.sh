#!/usr/bin/env bash
# Bad input to `ringattn train` and `ringattn eval`: each must end with one clear message (naming
# the key or file and what was expected) and a non-zero exit, before any training step runs.
# docs/reliability.md lists each case with the message. Usage: bad_input_test.sh path/to/ringattn
set -uo pipefail
bin=$(realpath "${1:?usage: bad_input_test.sh RINGATTN_BINARY}")  # absolute: some runs start elsewhere (--wdir)
# shellcheck source=test/cli/lib.sh
source "$(dirname "$0")/lib.sh"
unset RINGATTN_DEBUG_FAULTS

# expect_error NAME PATTERN CMD...: the command must exit non-zero, print PATTERN, and run no
# training step (no progress line).
expect_error() {
  local name=$1 pattern=$2
  shift 2
  local out rc
  out=$("$@" 2>&1)
  rc=$?
  if [ $rc -ne 0 ] && grep -q -- "$pattern" <<<"$out" && ! grep -q "step 1/" <<<"$out"; then
    pass "$name"
  else
    fail "$name (exit $rc, expected /$pattern/): $(tail -3 <<<"$out")"
  fi
}

cfgdir=$(cd "$(dirname "$0")/../../configs" && pwd)
tiny=(--config "$cfgdir/tiny.json" --set train.seq_len=128 --set train.steps=2 --set eval.every=0
  --set peak_tflops=1 --set comm.timeout_s=20)
train1() { "$bin" train "${tiny[@]}" --set run_dir="$tmp/run" "$@"; }
train2() { mpirun -np 2 "$bin" train "${tiny[@]}" --set run_dir="$tmp/run" "$@"; }

# --- Config files and --set ----------------------------------------------------------------------
printf '{"train": {"steps": 3,}}' >"$tmp/malformed.json"
expect_error "malformed JSON" "malformed JSON in $tmp/malformed.json at line 1, column 23" \
  "$bin" train --config "$tmp/malformed.json"
printf '{"train": {"seq_length": 1024}}' >"$tmp/unknown.json"
expect_error "unknown key, with a suggestion" "unknown key 'train.seq_length' in $tmp/unknown.json; did you mean 'train.seq_len'?" \
  "$bin" train --config "$tmp/unknown.json"
expect_error "unknown --set key" "unknown key 'optim.learning_rate' in --set" train1 --set optim.learning_rate=1
printf '{"train": {"steps": "many"}}' >"$tmp/type.json"
expect_error "wrong type in a file" 'train.steps in .*type.json must be an integer, found "many" (string)' \
  "$bin" train --config "$tmp/type.json"
expect_error "wrong type in --set" "train.steps in --set must be an integer, found 'ten'" train1 --set train.steps=ten
expect_error "out of range (>= 1)" "train.steps = 0 in --set is out of range: expected value >= 1" train1 --set train.steps=0
printf '{"optim": {"beta1": 1.5}}' >"$tmp/range.json"
expect_error "out of range (< 1)" "optim.beta1 = 1.5 in .*range.json is out of range: expected 0 <= value < 1" \
  "$bin" train --config "$tmp/range.json"
expect_error "bad choice, with a suggestion" "attention.impl in --set must be one of vanilla, blockwise, ring, found \"rng\"; did you mean 'ring'?" \
  train1 --set attention.impl=rng
expect_error "--set without =" "expected KEY=VALUE" train1 --set train.steps
expect_error "--set value not UTF-8" "is not UTF-8; config keys and values must be UTF-8" \
  train1 --set "run_dir=$tmp/r$(printf '\377')"
expect_error "missing config file" "cannot open config file '$tmp/none.json'" "$bin" train --config "$tmp/none.json"
expect_error "cross-key rule" "optim.min_lr = 0.1 must be <= optim.lr = 0.001" train1 --set optim.min_lr=0.1

# Every rank reads the config (or the data) alike and fails alike: the message once, the job ended
# without MPI_Abort (comm/agreed_error.h), exit 1.
expect_said_once() {
  local name=$1 pattern=$2
  shift 2
  local out rc said
  out=$("$@" 2>&1)
  rc=$?
  said=$(grep -c -- "$pattern" <<<"$out")
  if [ $rc -ne 0 ] && [ "$said" -eq 1 ] && ! grep -q "MPI_ABORT" <<<"$out"; then
    pass "$name"
  else
    fail "$name (exit $rc, said $said times): $(head -5 <<<"$out")"
  fi
}
expect_said_once "a config error on 4 ranks is said once, without MPI_Abort" \
  "unknown key 'train.stepz' in --set; did you mean 'train.steps'?" \
  mpirun -np 4 "$bin" train "${tiny[@]}" --set run_dir="$tmp/run" --set train.stepz=3
expect_said_once "a missing token file on 2 ranks is said once" \
  "token file '$tmp/none.ratokens': cannot open" \
  train2 --set data.source=tokens --set data.token_file="$tmp/none.ratokens"
expect_said_once "a missing attention input on 2 ranks is said once" \
  "safetensors file '$tmp/none.safetensors'" \
  mpirun -np 2 "$bin" attention --input "$tmp/none.safetensors" --output "$tmp/none_out.safetensors"
# Ranks started with different arguments (an MPMD launch; a wrapper script that differs per
# node): refused before anything else, naming the argument (--resume on one rank only, say,
# started it afresh while the others resumed).
expect_said_once "ranks started with different arguments are refused, naming the argument" \
  "this rank was started with other arguments than rank 0: argument [0-9]* is 'train.warmup_steps=1' here and 'train.warmup_steps=2' on rank 0" \
  mpirun -np 1 "$bin" train "${tiny[@]}" --set run_dir="$tmp/run" --set train.warmup_steps=2 : \
  -np 1 "$bin" train "${tiny[@]}" --set run_dir="$tmp/run" --set train.warmup_steps=1
# Ranks given different config files under one name (a copy edited on one node only; here each
# rank starts in its own directory): refused, naming the first key that differs.
mkdir -p "$tmp/c0" "$tmp/c1"
cp "$cfgdir/tiny.json" "$tmp/c0/c.json"
sed 's/"warmup_steps": 2/"warmup_steps": 1/' "$cfgdir/tiny.json" >"$tmp/c1/c.json"
same_args=(train --config c.json --set train.seq_len=128 --set train.steps=2 --set eval.every=0
  --set comm.timeout_s=20 --set run_dir="$tmp/run")
expect_said_once "ranks with different config files are refused, naming the key" \
  "this rank resolved another config than rank 0: train.warmup_steps is 1 here and 2 on rank 0" \
  mpirun -np 1 --wdir "$tmp/c0" "$bin" "${same_args[@]}" : -np 1 --wdir "$tmp/c1" "$bin" "${same_args[@]}"
# A relative run_dir on ranks that start in different directories (as a node-local one on several
# nodes): rank 1 does not see rank 0's checkpoint directory; refused before the first step (before,
# the run trained and lost everything at its first save).
mkdir -p "$tmp/w0" "$tmp/w1"
expect_said_once "a run_dir that not every rank sees is refused before training" \
  "this rank does not see the checkpoint directory that rank 0 prepared ('$tmp/w1/rel/checkpoints' here has no '.shared_check" \
  mpirun -np 1 --wdir "$tmp/w0" "$bin" train "${tiny[@]}" --set run_dir=rel : \
  -np 1 --wdir "$tmp/w1" "$bin" train "${tiny[@]}" --set run_dir=rel

python3 -c "print('{\"train\": {\"steps\": ' + '[' * 100000 + ']' * 100000 + '}}')" >"$tmp/deep.json"
expect_error "a config nested thousands deep is refused at once" \
  "malformed config in $tmp/deep.json: objects and arrays nested more than 32 deep" \
  timeout 60 "$bin" train --config "$tmp/deep.json"
expect_error "an endless config file (/dev/zero) is refused" \
  "config file '/dev/zero' is larger than 16 MiB: not a config file" timeout 60 "$bin" train --config /dev/zero
printf '{"train": {"steps": 3}}\0garbage' >"$tmp/nul.json"
expect_error "a NUL byte in a config is refused, not the end of it" \
  "malformed JSON in $tmp/nul.json at line 1, column 23: a NUL byte" "$bin" config --config "$tmp/nul.json"
expect_error "memory_limit_gb below one byte is a limit, not none" \
  "the model does not fit memory_limit_gb = 5e-10 GiB per rank" train1 --set memory_limit_gb=5e-10

mkdir -p "$tmp/adir"
expect_error "a directory as the config file" "config file '$tmp/adir' is a directory, not a JSON file" \
  "$bin" train --config "$tmp/adir"
expect_error "an error prints at log_level = off" "token file '$tmp/none.ratokens': cannot open" \
  train1 --set log_level=off --set data.source=tokens --set data.token_file="$tmp/none.ratokens"

expect_error "an empty run_dir" "run_dir is empty: set it to the directory" train1 --set run_dir=
touch "$tmp/afile"
expect_error "a file as run_dir" "run_dir: cannot create the run directory '$tmp/afile'" \
  train1 --set run_dir="$tmp/afile"
mkdir -p "$tmp/rd" && touch "$tmp/rd/checkpoints"
expect_error "a file where run_dir/checkpoints goes" "run_dir: cannot create the checkpoint directory '$tmp/rd/checkpoints'" \
  train1 --set run_dir="$tmp/rd"

# --- Mesh, sequence split, memory ------------------------------------------------------------------
expect_error "mesh does not match the world size" "mesh dp=1 fsdp=1 sp=2 tp=1 needs 2 ranks but the job has 3" \
  mpirun -np 3 "$bin" train "${tiny[@]}" --set run_dir="$tmp/run" --set mesh.sp=2
expect_error "sequence length the layout cannot split" "train.seq_len = 130: .*multiple of 4" \
  train2 --set train.seq_len=130
expect_error "chunk that does not tile a rank's runs" "attention.q_chunk = 24 does not tile train.seq_len = 128" \
  train2 --set attention.q_chunk=24
expect_error "model that does not fit memory_limit_gb (the estimate)" \
  "the model does not fit memory_limit_gb = 0.002 GiB per rank: memory plan per rank: .* LM head and loss chunk .* total about [0-9.]* MiB" \
  train1 --set memory_limit_gb=0.002
expect_error "memory_limit_gb below the GEMM speed probe's operands: the plan says what does not fit" \
  "the model does not fit memory_limit_gb = 0.002 GiB per rank: memory plan per rank" \
  train1 --set memory_limit_gb=0.002 --set peak_tflops=0
expect_error "config: a retrieval task beyond the vocabulary" \
  "model.vocab_size = 256 is smaller than the vocabulary of the data, 317" \
  "$bin" config --config "$cfgdir/tiny.json" --set data.retrieval.key_vocab=300
expect_output "a run that ends within the curriculum is warned of" \
  "train.steps = 2 ends within the sequence-length curriculum (its stages take 5 steps): this run trains at 64 only, never at train.seq_len = 128" \
  train1 --set train.curriculum_seq_lens=64 --set train.curriculum_steps=5 --set run_dir="$tmp/curriculum"
out=$("$bin" --log-level warn train "${tiny[@]}" --set run_dir="$tmp/quiet" 2>&1)
[ $? -eq 0 ] && ! grep -q "\[info\]" <<<"$out" && pass "--log-level warn overrides the config's log_level" ||
  fail "--log-level warn overrides the config's log_level: $(head -3 <<<"$out")"
# The warning comes from the config alone, before the backend; the run then ends, at the missing
# GPU or (a simulated GPU, which CUDA_VISIBLE_DEVICES does not hide) at the memory limit.
expect_error "tiny tiles on a GPU are warned of (launches dominate)" \
  "attention.kernel = tiles with q_chunk = 1 and k_chunk = 2 cuts the 128 tokens of a rank into 8192 tile pairs per attention call" \
  env CUDA_VISIBLE_DEVICES= "$bin" train "${tiny[@]}" --set run_dir="$tmp/run" --set device=cuda \
  --set attention.q_chunk=1 --set attention.k_chunk=2 --set memory_limit_gb=0.0001
expect_error "model whose shards alone do not fit memory_limit_gb" \
  "the model does not fit memory_limit_gb = 0.0001 GiB per rank: building it failed: memory limit exceeded" \
  train1 --set memory_limit_gb=0.0001

# --- Data files ----------------------------------------------------------------------------------
# tokfile PATH COUNT [BYTE]: a 2-byte token file of COUNT tokens, every byte BYTE (default 0).
tokfile() {
  {
    printf 'RATOKENS\x01\x00\x00\x00\x02\x00\x00\x00'
    printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($2 & 255)) $((($2 >> 8) & 255)) $((($2 >> 16) & 255)) 0)"
    printf '\x00\x00\x00\x00'
    head -c $((2 * $2)) /dev/zero | tr '\0' "\\${3:-000}"
  } >"$1"
}
tokfile "$tmp/good.ratokens" 4000
tok=(--set data.source=tokens)
expect_ok_tokens=$(train1 "${tok[@]}" --set data.token_file="$tmp/good.ratokens" --set run_dir="$tmp/tokrun" 2>&1) &&
  pass "a valid token file trains" || fail "a valid token file trains: $(tail -3 <<<"$expect_ok_tokens")"
expect_error "missing token file" "token file '$tmp/none.ratokens': cannot open: No such file or directory" \
  train1 "${tok[@]}" --set data.token_file="$tmp/none.ratokens"
: >"$tmp/empty.ratokens"
expect_error "empty token file" "token file '$tmp/empty.ratokens' is empty" \
  train1 "${tok[@]}" --set data.token_file="$tmp/empty.ratokens"
head -c 3000 "$tmp/good.ratokens" >"$tmp/trunc.ratokens"
expect_error "truncated token file" "token file '$tmp/trunc.ratokens': header says 4000 tokens of 2 bytes (8024 bytes with the 24-byte header) but the file has 3000 bytes: truncated" \
  train1 "${tok[@]}" --set data.token_file="$tmp/trunc.ratokens"
printf 'not a token file at all, just text' >"$tmp/text.ratokens"
expect_error "not a token file" "token file '$tmp/text.ratokens': bad magic 'not a to'" \
  train1 "${tok[@]}" --set data.token_file="$tmp/text.ratokens"
tokfile "$tmp/big.ratokens" 4000 377
expect_error "token id above the vocabulary" "token file '$tmp/big.ratokens': token id 65535 at index .* is not below the vocabulary size 256" \
  train2 "${tok[@]}" --set data.token_file="$tmp/big.ratokens"
expect_error "token source without a file" "data.source = tokens needs data.token_file" train1 "${tok[@]}"
: >"$tmp/empty.txt"
expect_error "empty text file" "text file '$tmp/empty.txt' is empty" \
  train1 --set data.source=text --set model.vocab_size=257 --set data.text_files="$tmp/empty.txt"
expect_error "missing text file" "text file '$tmp/none.txt': cannot open" \
  train1 --set data.source=text --set model.vocab_size=257 --set data.text_files="$tmp/none.txt"
printf 'short' >"$tmp/short.txt"
expect_error "text shorter than a sequence" "text files: the stream has 5 tokens, shorter than sequence length + 1 = 129" \
  train1 --set data.source=text --set model.vocab_size=257 --set data.text_files="$tmp/short.txt"

mkfifo "$tmp/fifo"  # a named pipe opened for reading waits for a writer: it must not hang
expect_error "a FIFO as the token file" "token file '$tmp/fifo': not a regular file" \
  timeout 60 "$bin" train "${tiny[@]}" --set run_dir="$tmp/run" --set data.source=tokens \
  --set data.token_file="$tmp/fifo"
expect_error "a FIFO as a text file" "text file '$tmp/fifo': not a regular file" \
  timeout 60 "$bin" train "${tiny[@]}" --set run_dir="$tmp/run" --set data.source=text \
  --set model.vocab_size=257 --set data.text_files="$tmp/fifo"

# --- Checkpoints ---------------------------------------------------------------------------------
rm -rf "$tmp/run"  # earlier cases' runs: this one starts afresh
out=$(train2 --set checkpoint.every=1 2>&1) && pass "a 2-step run to have a checkpoint" || fail "2-step run: $(tail -3 <<<"$out")"
expect_error "eval of a missing checkpoint" "checkpoint '$tmp/nothere' does not exist" \
  "$bin" eval "${tiny[@]}" --checkpoint "$tmp/nothere"
expect_error "eval with no checkpoint in run_dir" "eval: no complete checkpoint in '$tmp/empty/checkpoints'" \
  "$bin" eval "${tiny[@]}" --set run_dir="$tmp/empty"
expect_error "checkpoint of another model shape" "holds a model with model.hidden_size = 64, but this config has 32; use the model it was trained as" \
  "$bin" eval "${tiny[@]}" --set run_dir="$tmp/run" --set model.hidden_size=32 --set model.head_dim=8
# Shapes whose element counts match the checkpoint's: only its recorded config tells them apart.
expect_error "checkpoint of other heads, same sizes" "holds a model with model.num_heads = 4, but this config has 8" \
  "$bin" eval "${tiny[@]}" --set run_dir="$tmp/run" --set model.num_heads=8 --set model.head_dim=8 \
  --set model.num_kv_heads=4
expect_error "checkpoint with an untied head, tied" "model.tie_embeddings = false, but this config has true" \
  "$bin" eval "${tiny[@]}" --set run_dir="$tmp/run" --set model.tie_embeddings=true
expect_output "a checkpoint evaluated with another rope_theta is said" "was trained with model.rope_theta = 10000; this run uses 5" \
  "$bin" eval "${tiny[@]}" --set run_dir="$tmp/run" --set model.rope_theta=5
expect_error "resume on another mesh" "was written by 2 ranks with mesh dp=1 fsdp=1 sp=2 tp=1, but this run has 1 ranks" \
  train1 --set train.steps=4 --resume
expect_error "resume with another seed" "was trained with seed 1, this config has seed 7" \
  train2 --set train.steps=4 --set seed=7 --resume
expect_error "resume with another model shape" "holds a model with model.intermediate_size = 192, but this config has 128" \
  train2 --set train.steps=4 --set model.intermediate_size=128 --resume

# Nothing already saved is lost: a fresh run where one is, or an export over files.
snapshot() { (cd "$1" && find . -type f -exec cksum {} + | sort); }
before=$(snapshot "$tmp/run")
expect_error "a fresh run where a run's checkpoints are" "run_dir '$tmp/run' already holds a run's checkpoints (the latest: .*step_2); add --resume" \
  train2 --set checkpoint.every=1 --set seed=5
[ "$(snapshot "$tmp/run")" = "$before" ] && pass "... and the run is untouched" || fail "... the run changed"
mkdir -p "$tmp/base" && printf '{"model_type": "llama"}' >"$tmp/base/config.json" &&
  printf 'weights' >"$tmp/base/model-00001-of-00002.safetensors"
before=$(snapshot "$tmp/base")
expect_error "export over a directory with files" "export: '$tmp/base' already exists and is not empty; .* add --overwrite" \
  "$bin" export --checkpoint "$tmp/run" --to "$tmp/base"
[ "$(snapshot "$tmp/base")" = "$before" ] && pass "... and its files are untouched" || fail "... its files changed"
before=$(snapshot "$tmp/run")
expect_error "export over a checkpoint, even with --overwrite" "is a training checkpoint; export into a new directory" \
  "$bin" export --checkpoint "$tmp/run/checkpoints/step_2" --to "$tmp/run/checkpoints/step_2" --overwrite
[ "$(snapshot "$tmp/run")" = "$before" ] && pass "... and the checkpoint is untouched" || fail "... the checkpoint changed"
out=$("$bin" export --checkpoint "$tmp/run" --to "$tmp/base" --overwrite 2>&1) &&
  [ ! -e "$tmp/base/model-00001-of-00002.safetensors" ] && [ -f "$tmp/base/model.safetensors" ] &&
  pass "export --overwrite replaces the weight files" || fail "export --overwrite: $(tail -3 <<<"$out")"
expect_output "a resume with another config says what changed" \
  "differs from the one it was trained with: attention.layout: \"zigzag\" -> \"striped\"" \
  train2 --set train.steps=3 --set attention.layout=striped --resume
out=$(train2 --set train.steps=4 --set attention.layout=striped --set mesh.sp=2 --resume 2>&1)
[ $? -eq 0 ] && ! grep -q "differs from the one it was trained with" <<<"$out" &&
  pass "a resume with another spelling of the same mesh (sp -1 -> 2) says nothing" ||
  fail "a resume with another spelling of the same mesh: $(grep -m1 differs <<<"$out")"
# Another CPU thread count splits the sums differently: a resume with one is warned of.
if [ "$(getconf _NPROCESSORS_ONLN)" -ge 2 ]; then
  env OPENBLAS_NUM_THREADS=1 "$bin" train "${tiny[@]}" --set run_dir="$tmp/threads" >/dev/null 2>&1
  expect_output "a resume with another CPU thread count is warned of" \
    "was trained with 1 CPU thread per rank, this run has 2: sums are split differently, so the result will differ in the last bits from an uninterrupted run (OPENBLAS_NUM_THREADS=1 continues it exactly)" \
    env OPENBLAS_NUM_THREADS=2 "$bin" train "${tiny[@]}" --set run_dir="$tmp/threads" --set train.steps=3 --resume
else
  echo "skip a resume with another CPU thread count: one processor"
fi
# Without OPENBLAS_NUM_THREADS or OMP_NUM_THREADS a rank takes the CPUs of its affinity mask.
first_cpu() { taskset -pc $$ | sed 's/.*: *//; s/[-,].*//'; }
if command -v taskset >/dev/null && [ "$(getconf _NPROCESSORS_ONLN)" -ge 2 ]; then
  expect_output "a rank bound to one CPU runs one thread" "threads per rank: 1$" \
    env -u OPENBLAS_NUM_THREADS -u OMP_NUM_THREADS taskset -c "$(first_cpu)" "$bin" train "${tiny[@]}" --set run_dir="$tmp/bound"
else
  echo "skip a rank bound to one CPU: no taskset or one processor"
fi

cli_summary

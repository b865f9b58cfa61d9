#!/usr/bin/env bash
# The GPU session in one command: what only a GPU can show for the CUDA backend, run on the lent
# GPU machine (../shared/device/README.md) and written under $OUT. Stages run in order, each
# with its own time limit; a failing stage is recorded and the next one still runs. The summary
# (stage, status, seconds) is $OUT/summary.txt and the script's last output; the exit status is 0
# only when every stage asked for ran and passed.
#
#   stage 0  machine facts (nvidia-smi, MPI, CUDA libraries)
#   stage 1  build (CUDA on, sm_90) unless $RINGATTN_GPU_BIN already holds the binaries
#   stage 2  [cuda] tests: every CUDA operation against the CPU backend, random inputs, and the
#            fused attention kernels' sequence tests (on the GPU there); the attention tool: ring
#            on 2 ranks on the GPU against blockwise on the CPU, and the fused kernels at 8K
#   stage 3  [device] tests on the real GPU: tensors, optimizer ops, host-staged collectives, ring
#            attention, training and checkpoints against the CPU (1 rank; 2 and 4 ranks share
#            the GPU through the MPI transport)
#   stage 4  compute-sanitizer memcheck over [cuda] and [device] (1 rank)
#   stage 5  the trainer end to end on the GPU: tiny config (CPU vs GPU losses), NCCL transport
#            on one rank, and the demo on 4 ranks sharing the GPU (timed)
#   stage 6  attention benchmark: ringattn blockwise (fused bf16 kernels, bf16 tile GEMMs, fp32)
#            vs PyTorch SDPA (fp32 and bf16), S = 8K..64K, H = 16, D = 128, causal, in the same run;
#            then the fused kernels on the 1B shape's heads (32 over 4, D = 64) at 32K, and the
#            blocks per SM the driver gives each fused kernel
#   stage 7  training benchmark: 1B-shaped model (bf16 with the fused attention kernels, bf16, f32)
#            at S = 32K on one GPU, with the driver's memory use sampled by nvidia-smi beside the
#            allocator's peak
#
#   stage 8  the demo (configs/demo.json) on 4 ranks sharing the GPU, timed
#   stage 9  the fused attention kernels under compute-sanitizer racecheck and synccheck
#
# Usage on the device machine (from the repository root; .debs carried, see the README above;
# scripts/gpu/unpack-deps.sh says why not `dpkg -x` straight onto /):
#   source scripts/gpu/unpack-deps.sh .debs; bash scripts/gpu/check.sh
# Options (environment):
#   RINGATTN_GPU_BIN       prebuilt bin directory (built here for sm_90 and carried); rebuilt on
#                          the machine when its libraries do not resolve there
#   RINGATTN_GPU_STAGES    the stages to run, in that order (default "0 1 2 9 3 4 5 6 7 8")
#   RINGATTN_GPU_DEADLINE  seconds for the whole script: each stage's limit is cut to what is
#                          left, and a stage with under 15 s left is skipped, so the summary and
#                          the pack below always get written inside a device lease
#   RINGATTN_GPU_QUICK=1   shorter benchmark sweeps
#   RINGATTN_GPU_PACK=F    at the end, pack the logs and JSON results (no tensors, no
#                          checkpoints) into the tar file F
#   RINGATTN_GPU_REHEARSAL=1  a dry run without a GPU, so that a lease is not spent on a broken
#                          command: RINGATTN_GPU_BIN is a simulated-GPU build (-DRINGATTN_CUDA=SIM),
#                          every stage runs its commands at sizes the host runs in seconds,
#                          nvidia-smi and compute-sanitizer are stand-ins that run the command
#                          they wrap, and PyTorch's side is skipped when it is not installed
#                          (stage 5's NCCL run uses the simulated NCCL, comm/nccl_sim). Its
#                          figures mean nothing; what it checks is that every stage passes.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
out=${OUT:-$root/runs/gpu-check}
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_hwloc_base_binding_policy=none
export OMPI_MCA_btl_base_warn_component_unused=0 OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-4}
# Sandboxed kernels (gVisor) refuse the cross-memory-attach syscalls of Open MPI's shared memory.
export OMPI_MCA_btl_vader_single_copy_mechanism=none
stages=${RINGATTN_GPU_STAGES:-0 1 2 9 3 4 5 6 7 8}
quick=${RINGATTN_GPU_QUICK:-0}
rehearsal=${RINGATTN_GPU_REHEARSAL:-0}
start=$(date +%s)
deadline=$((start + ${RINGATTN_GPU_DEADLINE:-100000}))
summary=$out/summary.txt
: >"$summary"

# stage N NAME LIMIT_S CMD...: runs CMD with a time limit, output to $out/stageN_NAME.log.
stage() {
  local n=$1 name=$2 limit=$3
  shift 3
  # Reserve the kill grace (10 s) and the summary and pack (5 s) before the deadline.
  local log=$out/stage${n}_$name.log t0 rc left=$((deadline - $(date +%s) - 15))
  if [ "$left" -lt 15 ]; then
    printf 'stage %s %-12s %-14s\n' "$n" "$name" "SKIPPED (deadline)" | tee -a "$summary"
    return 0
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  echo "== stage $n: $name (limit ${limit}s)"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" bash -o pipefail -c "$*" >"$log" 2>&1
  rc=$?
  local status=ok
  [ $rc -ne 0 ] && status="FAILED rc=$rc"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="TIMEOUT"
  printf 'stage %s %-12s %-14s %4ss  %s\n' "$n" "$name" "$status" "$(($(date +%s) - t0))" \
    "$log" | tee -a "$summary"
  tail -5 "$log" | sed 's/^/    /'
}

bin=${RINGATTN_GPU_BIN:-$root/build-gpu/bin}
# Open MPI's own launcher even where the image has another MPI's mpirun first in PATH.
mpirun=$(command -v mpirun.openmpi || command -v mpirun)
mpi="$mpirun --oversubscribe --allow-run-as-root --bind-to none"

# The carried binaries need libnccl.so.2 and cuBLAS, which the image may keep outside the
# loader's path (NCCL in PyTorch's wheel, say): add the folder of each one that does not resolve.
resolve_libs() {
  local missing lib dir
  missing=$(ldd "$1" 2>/dev/null | awk '/not found/ {print $1}')
  for lib in $missing; do
    dir=$(find /usr/local /opt /usr/lib -name "$lib" 2>/dev/null | head -1)
    [ -n "$dir" ] && export LD_LIBRARY_PATH=$(dirname "$dir")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  done
  ! ldd "$1" 2>/dev/null | grep -q 'not found'
}
if [ -x "$bin/ringattn_tests" ] && ! resolve_libs "$bin/ringattn_tests"; then
  echo "carried binaries in $bin do not load here:"
  ldd "$bin/ringattn_tests" | grep 'not found'
  bin=$root/build-gpu/bin
fi
tests=$bin/ringattn_tests
ra=$bin/ringattn

# The sizes each stage runs: a GPU's, or a rehearsal's. attn_seq and fused_seq: stage 2's
# attention tool; seqs and chunk: stage 6's sweep, seq_1b_heads its run on the 1B shape's heads;
# train_seq and train_shrink: stage 7's 1B-shaped step; tiny_steps: stage 5; demo_set: stage 8.
attn_seq=4096 fused_seq=8192 seqs="8192 16384 32768 65536" chunk=1024 seq_1b_heads=32768
train_seq=32768 train_shrink="" tiny_steps=20 demo_set="" torch=1
[ "$quick" = 1 ] && seqs="8192 16384"
if [ "$rehearsal" = 1 ]; then
  attn_seq=256 fused_seq=256 seqs="256 512" chunk=128 seq_1b_heads=512 train_seq=256
  # The 1B config's keys and head shape; one layer, a narrow FFN, a small vocabulary.
  train_shrink="--set model.num_layers=1 --set model.intermediate_size=512 \
    --set model.vocab_size=512 --set model.loss_chunk=256 --set attention.q_chunk=128 \
    --set attention.k_chunk=128"
  tiny_steps=3 demo_set="--set train.steps=3 --set eval.batches=1"
  python3 -c 'import torch' 2>/dev/null || torch=0
  python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read())' scripts/gpu/sdpa_bench.py ||
    echo "stage 6 will fail on a GPU: scripts/gpu/sdpa_bench.py does not parse"
  stand_ins=$out/rehearsal_bin
  mkdir -p "$stand_ins"
  # nvidia-smi: a line for stage 0; as stage 7's sampler (-lms), a 0 every 200 ms until killed.
  cat >"$stand_ins/nvidia-smi" <<'SH'
#!/usr/bin/env bash
case "$*" in *-lms*) while sleep 0.2; do echo 0; done ;; *) echo "nvidia-smi (rehearsal stand-in)" ;; esac
SH
  # compute-sanitizer: the options checked and dropped, the command it wraps run as it is. (Even
  # where the toolkit's own is on PATH: without a GPU it would only fail.)
  cat >"$stand_ins/compute-sanitizer" <<'SH'
#!/usr/bin/env bash
while [ $# -gt 0 ]; do
  case "$1" in
    --tool) case "$2" in memcheck | racecheck | synccheck | initcheck) ;; *)
      echo "compute-sanitizer (stand-in): no tool '$2'" >&2; exit 2 ;; esac; shift 2 ;;
    --error-exitcode) shift 2 ;;
    --*) echo "compute-sanitizer (stand-in): option $1 not known here" >&2; exit 2 ;;
    *) break ;;
  esac
done
exec "$@"
SH
  chmod +x "$stand_ins"/*
  export PATH=$stand_ins:$PATH
  echo "== rehearsal: $bin, sizes for the host, stand-ins in $stand_ins"
  echo "REHEARSAL on the simulated GPU ($bin): the figures mean nothing" >"$summary"
fi

stage_0() {
  stage 0 machine 60 "nvidia-smi; echo; which mpirun mpirun.openmpi nvcc python3 compute-sanitizer; \
  $mpirun --version | head -1; nvcc --version | tail -2; cat /etc/os-release | head -2; nproc; \
  ls /usr/local/cuda/lib64 | grep -E 'nccl|cublas'; echo LD_LIBRARY_PATH=\$LD_LIBRARY_PATH; \
  ldd $tests | grep -E 'nccl|cublas|cudart|mpi|blas|spdlog'; \
  python3 -c 'import torch; print(\"torch\", torch.__version__, torch.version.cuda)'; true"
}

stage_1() {
  [ -x "$tests" ] && return 0
  stage 1 build 420 "cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DRINGATTN_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 && cmake --build build-gpu -j \$(nproc)"
}

stage_2() {
  # Both the tests and the tool run, whichever fails (the first GPU run lost the tool's check).
  # Then the fused kernels at scale (8K tokens, D = 128, GQA, documents) against the bf16 tiles,
  # on one rank and as a 2-rank ring. --compare's bound is max |diff| <= tol * max(1, max |value|);
  # the tests' per-element 4e-3 * (1 + |ref|) gives at most 8e-3 * max(1, max |ref|).
  local in=$out/attn_in.safetensors big=$out/attn_big.safetensors
  stage 2 cuda_tests 180 "rc=0; $tests '[cuda]' || rc=1; $tests 'Fused attention kernels*' || rc=1; \
  $ra attention --make-input $in --seq $attn_seq --heads 8 --kv-heads 2 --head-dim 64 --with-grad && \
  $mpi -np 2 $ra attention --input $in --output $out/attn_gpu.safetensors \
    --impl ring --layout zigzag --causal --device cuda && \
  $ra attention --input $in --output $out/attn_cpu.safetensors --impl blockwise --causal && \
  $ra attention --compare $out/attn_gpu.safetensors $out/attn_cpu.safetensors || rc=1; \
  echo '== fused kernels at $fused_seq tokens'; \
  $ra attention --make-input $big --seq $fused_seq --heads 8 --kv-heads 2 --head-dim 128 --with-grad \
    --segments 3 && \
  $ra attention --input $big --output $out/big_tiles.safetensors --impl blockwise --causal \
    --device cuda --precision bf16 --q-chunk 512 --k-chunk 512 && \
  $ra attention --input $big --output $out/big_fused.safetensors --impl blockwise --causal \
    --device cuda --precision bf16 --kernel fused && \
  $mpi -np 2 $ra attention --input $big --output $out/big_fused_ring.safetensors --impl ring \
    --layout zigzag --causal --device cuda --precision bf16 --kernel fused && \
  $ra attention --compare $out/big_fused.safetensors $out/big_tiles.safetensors --tolerance 8e-3 && \
  $ra attention --compare $out/big_fused_ring.safetensors $out/big_tiles.safetensors \
    --tolerance 8e-3 || rc=1; \
  exit \$rc"
}
# Stage 9: the fused kernels under compute-sanitizer's racecheck and synccheck (shared-memory
# hazards: a missing __syncthreads, which the CPU emulation of their body cannot fully show).
stage_9() {
  local fused_test="'CUDA attention: the fused kernels match the CPU*'"
  stage 9 fused_races 180 "rc=0; for tool in racecheck synccheck; do \
    echo \"== compute-sanitizer \$tool\"; \
    compute-sanitizer --tool \$tool --error-exitcode 9 $tests $fused_test || rc=1; done; exit \$rc"
}
stage_3() {
  stage 3 device_tests 150 "rc=0; for np in 1 2 4; do echo \"== [device] on \$np rank(s)\"; \
  $mpi -np \$np $tests '[device]' || rc=1; done; exit \$rc"
}
stage_4() {
  stage 4 sanitizer 300 "rc=0; compute-sanitizer --tool memcheck --error-exitcode 9 $tests '[cuda]' || rc=1; \
  compute-sanitizer --tool memcheck --error-exitcode 9 $tests '[device]' || rc=1; exit \$rc"
}

# Stage 5: the same tiny run on the CPU and on the GPU; their final losses must agree to 1e-3.
# The NCCL run's FSDP group is one rank, which would read and add in place: the debug fault
# fsdp_communicate_alone makes it gather and reduce-scatter through NCCL's stream all the same.
stage_5() {
  tiny="--config configs/tiny.json --set train.steps=$tiny_steps --set checkpoint.every=0 \
  --set mesh.sp=1"
  # Fresh run directories: a rerun into the same OUT must not meet the last run's checkpoints
  # (train refuses a fresh run there).
  stage 5 trainer 120 "set -e; rm -rf $out/tiny_cpu $out/tiny_gpu $out/tiny_nccl; \
  $ra train $tiny --set run_dir=$out/tiny_cpu; \
  $ra train $tiny --set run_dir=$out/tiny_gpu --set device=cuda; \
  RINGATTN_DEBUG_FAULTS=fsdp_communicate_alone=1 \
  $ra train $tiny --set run_dir=$out/tiny_nccl --set device=cuda --set comm.transport=nccl \
    --set comm.timeout_s=10; \
  python3 - $out <<'PY'
import json, sys
out = sys.argv[1]
def last(run):
    rows = [json.loads(l) for l in open(f'{out}/{run}/metrics.jsonl') if '\"loss\"' in l]
    return rows[-1]['loss']
a, b, c = last('tiny_cpu'), last('tiny_gpu'), last('tiny_nccl')
print(f'final loss cpu {a:.6f} gpu {b:.6f} gpu+nccl {c:.6f}')
assert abs(a - b) <= 1e-3 * abs(a) and abs(a - c) <= 1e-3 * abs(a), 'GPU and CPU losses differ'
PY"
}
stage_8() {
  stage 8 demo 420 "rm -rf $out/demo_gpu; /usr/bin/time -v $mpi -np 4 $ra train --config configs/demo.json --set device=cuda \
    --set run_dir=$out/demo_gpu $demo_set 2>&1 | tail -40"
}

# Stage 6: ours and PyTorch's in the same run, same shapes and FLOP convention (PyTorch first:
# it is quick, and a sweep of ours cut by the time limit still leaves the comparison rows).
stage_6() {
  local sdpa=python3
  [ "$torch" = 1 ] || sdpa="echo PyTorch not installed: skipped"
  stage 6 attention 360 "$sdpa scripts/gpu/sdpa_bench.py --seqs \$(echo $seqs | tr ' ' ,) \
    --heads 16 --head-dim 128 --causal --dtype float32 --json $out/sdpa_float32.json; \
  $sdpa scripts/gpu/sdpa_bench.py --seqs \$(echo $seqs | tr ' ' ,) --heads 16 --head-dim 128 \
    --causal --dtype bfloat16 --json $out/sdpa_bfloat16.json; \
  rc=0; for mode in fused bf16 f32; do for S in $seqs; do \
    flag=; name=ringattn_S\$S; [ \$mode = bf16 ] && flag=--bf16 && name=ringattn_bf16_S\$S; \
    [ \$mode = fused ] && flag=--fused && name=ringattn_fused_S\$S; \
    $ra bench attention --device cuda --impl blockwise --seq \$S --heads 16 --kv-heads 16 \
      --head-dim 128 --causal --q-chunk $chunk --k-chunk $chunk \$flag --json $out/\$name.json \
      || rc=1; \
  done; done; \
  $ra bench attention --device cuda --impl blockwise --seq $seq_1b_heads --heads 32 --kv-heads 4 \
    --head-dim 64 --causal --q-chunk $chunk --k-chunk $chunk --fused \
    --json $out/ringattn_fused_1b_heads_S$seq_1b_heads.json || rc=1; \
  echo '== the fused kernels per SM (expected: 2, 2, 2 at D = 128; 3, 3, 3 at D = 64)'; \
  grep -ho '\"fused_occupancy\": \"[^\"]*\"' $out/ringattn_fused_*.json | sort -u; \
  exit \$rc"
}

# Stage 7: one GPU, the 1B shape at S = 32K with layer checkpointing: model.dtype = bf16 with the
# fused attention kernels, bf16 with the tile GEMMs, then f32.
stage_7() {
  big="--config configs/1b.json --set comm.transport=mpi --set mesh.fsdp=1 \
  --set mesh.sp=1 --set attention.impl=blockwise --set train.batch_size=1 \
  --set train.micro_batches=1 --set memory_limit_gb=0 --set run_dir=$out/bench_1b \
  --set train.seq_len=$train_seq $train_shrink --steps 2"
  # One nvidia-smi sampler per run, so each driver peak belongs to one dtype.
  stage 7 train_1b 360 "rc=0; for dt in fused bf16 f32; do \
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 \
      > $out/train_1b_\${dt}_nvsmi_mib.txt & smi=\$!; \
    set_dt=\"--set model.dtype=\$dt\"; \
    [ \$dt = fused ] && set_dt=\"--set model.dtype=bf16 --set attention.kernel=fused\"; \
    $ra bench train $big \$set_dt --json $out/train_1b_\${dt}_S$train_seq.json || rc=1; \
    kill \$smi; \
    echo \"\$dt: driver memory peak (MiB, nvidia-smi): \$(sort -n $out/train_1b_\${dt}_nvsmi_mib.txt | tail -1)\"; \
  done; exit \$rc"
}

for n in $stages; do
  if declare -F "stage_$n" >/dev/null; then
    "stage_$n"
  else
    printf 'stage %s %-12s %-14s\n' "$n" "?" "FAILED (no such stage)" | tee -a "$summary"
  fi
done
echo "== summary ($summary, $(($(date +%s) - start)) s in all)"
cat "$summary"
if [ -n "${RINGATTN_GPU_PACK:-}" ]; then
  tar -C "$out" -czf "$RINGATTN_GPU_PACK" --exclude='*.safetensors' --exclude='checkpoints' \
    --exclude='step_*' --exclude="$(basename "$RINGATTN_GPU_PACK")" .
  ls -la "$RINGATTN_GPU_PACK"
fi
# Exit status: 0 when every stage that ran passed (a skipped one counts as not passed).
! grep -qE 'FAILED|TIMEOUT|SKIPPED' "$summary"

#!/usr/bin/env bash
# One GPU session for the conditional generator: train the uniform- and the normal-prior
# models at once (two processes on the one GPU), then the paper benchmark and steering.
# Writes into $RES as stages finish and touches $RES/DONE at the end, so it can run detached
# (setsid) across device calls, watched by gpu_watch.sh.
#
#   RES=/tmp/cond MINUTES=19 setsid bash benchmarks/conditional_gpu_run.sh &
#
# INIT_UNIFORM / INIT_NORMAL: release checkpoints to continue from (empty: from scratch).
set -u
RES=${RES:?set RES}
MINUTES=${MINUTES:-5}
BATCH=${BATCH:-1024}
COMPILE=${COMPILE:-1}
INIT_UNIFORM=${INIT_UNIFORM-ml/weights/conditional-uniform.pt}
INIT_NORMAL=${INIT_NORMAL-}
WORKERS=${WORKERS:-14}
TRAIN_ARGS=${TRAIN_ARGS:-}
BENCH_ARGS=${BENCH_ARGS:-}
RUN_DIR=${RUN_DIR:-.cache/conditional/runs}
mkdir -p "$RES" "$RUN_DIR"
START=$(date +%s)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$RES/gpu.txt" 2>&1
compile_args=()
[ "$COMPILE" = 1 ] && compile_args=(--compile)
# Parse the CIFs once, before two processes would race to write the same cache.
python -c "from ml.methods.conditional.data import load_split
for s in ('train', 'val', 'test'): load_split(s, $WORKERS)" > "$RES/cache.log" 2>&1

train() {  # $1 prior, $2 init checkpoint (may be empty), $3 learning rate
  local prior=$1 init=$2 lr=$3 init_args=()
  if [ -n "$init" ] && [ -f "$init" ]; then
    cp "$init" "$RUN_DIR/init-$prior.pt"  # a copy: the run overwrites its release file
    init_args=(--init "$RUN_DIR/init-$prior.pt")
  fi
  python -m ml.methods.conditional.train --prior "$prior" --minutes "$MINUTES" \
    --batch-size "$BATCH" --lr "$lr" --warmup 200 --fresh --export-every 120 \
    --state "$RUN_DIR/state-$prior.pt" --out "ml/weights/conditional-$prior.pt" \
    "${init_args[@]}" "${compile_args[@]}" $TRAIN_ARGS > "$RES/train_$prior.log" 2>&1
}
train uniform "$INIT_UNIFORM" 5e-4 &
train normal "$INIT_NORMAL" 6e-4 &
wait
python benchmarks/conditional_paper.py --uniform ml/weights/conditional-uniform.pt \
  --normal ml/weights/conditional-normal.pt --n 1000 --workers "$WORKERS" \
  --coord-anneal 0 10 --json "$RES/paper.json" --save "$RES/generated.npz" $BENCH_ARGS \
  > "$RES/paper.log" 2>&1
echo "total $(( $(date +%s) - START )) s" >> "$RES/gpu.txt"
touch "$RES/DONE"

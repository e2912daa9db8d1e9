#!/usr/bin/env bash
# One GPU session for CliqueFlowmer: train both checkpoints at once (two processes on the one
# GPU, oracle labels), then per checkpoint the reconstruction and the paper benchmark (run
# side by side). Everything a stage finishes is written to $OUT before the next starts.
#
#   OUT=/tmp/cf TRAIN_S=290 TOTAL_S=570 bash benchmarks/cliqueflowmer_gpu_run.sh
set -u
OUT=${OUT:?set OUT}
TRAIN_S=${TRAIN_S:-290}
TOTAL_S=${TOTAL_S:-570}
LABELS=${LABELS:-oracle}
# Extra arguments (a CPU dry run: tiny model, few seeds); later flags override earlier ones.
TRAIN_ARGS=${TRAIN_ARGS:-}
RECON_ARGS=${RECON_ARGS:-}
PAPER_ARGS=${PAPER_ARGS:-}
CKPT_DIR=${CKPT_DIR:-ml/weights}
RUN_DIR=${RUN_DIR:-.cache/cliqueflowmer/runs}
START=$(date +%s)
RES=$OUT/cliqueflowmer_results
mkdir -p "$RES"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$RES/gpu.txt" 2>&1

pipeline() {  # $1 property, $2 short name, $3 benchmark CPU workers
  local prop=$1 name=$2 workers=$3
  local ckpt=$CKPT_DIR/cliqueflowmer_$name.pt
  python -m ml.methods.cliqueflowmer.train --property "$prop" --labels "$LABELS" \
    --out "$ckpt" --work-dir "$RUN_DIR/$name" --time-budget "$TRAIN_S" \
    --batch-size 512 --lr 5e-4 --log-every 250 $TRAIN_ARGS > "$RES/train_$name.log" 2>&1
  cp "$ckpt" "$OUT/" && cp "$RUN_DIR/$name/history.json" "$RES/history_$name.json"
  local left=$(( TOTAL_S - ($(date +%s) - START) ))
  python benchmarks/cliqueflowmer_reconstruction.py --checkpoint "$ckpt" --n 500 \
    --guidance 0 2 4 --workers 2 --out "$RES/recon_$name.json" $RECON_ARGS \
    > "$RES/recon_$name.log" 2>&1 &
  python benchmarks/cliqueflowmer_paper.py --checkpoint "$ckpt" --n-seeds 10000 --steps 2000 \
    --workers "$workers" --eval-subset 500 --sun-subset 20 --relax-steps 100 \
    --deadline "$(( left - 15 ))" --out "$RES/paper_$name.json" \
    --save-candidates "$RES/candidates_$name.npz" $PAPER_ARGS > "$RES/paper_$name.log" 2>&1 &
  wait
}

pipeline formation_energy eform 6 &
pipeline band_gap bandgap 6 &
wait
echo "total $(( $(date +%s) - START )) s" >> "$RES/gpu.txt"

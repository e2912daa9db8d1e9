#!/usr/bin/env bash
# One GPU session for CliqueFlowmer: train both checkpoints at once (two processes on the one
# GPU, oracle labels), then per checkpoint the reconstruction and the paper benchmark (run
# side by side). Each stage writes into $RES as it finishes; $RES/DONE marks the end, so the
# script can run detached (setsid) across several device calls, watched by gpu_watch.sh.
#
#   RES=/tmp/cf TRAIN_S=1200 PAPER_S=330 setsid bash benchmarks/cliqueflowmer_gpu_run.sh &
#
# Each run continues from its own committed checkpoint (OWN_INIT=1, default); without one it
# starts from INIT (default: the formation-energy checkpoint), where the band-gap run reuses the
# autoencoder and trains a fresh predictor.
set -u
RES=${RES:?set RES}
TRAIN_S=${TRAIN_S:-290}
PAPER_S=${PAPER_S:-300}
LABELS=${LABELS:-oracle}
BATCH=${BATCH:-1024}
LR=${LR:-5e-4}
WARMUP_FRAC=${WARMUP_FRAC:-0.25}
COMPILE=${COMPILE:-1}
CKPT_DIR=${CKPT_DIR:-ml/weights}
RUN_DIR=${RUN_DIR:-.cache/cliqueflowmer/runs}
# Extra arguments (a CPU dry run: tiny model, few seeds); later flags override earlier ones.
TRAIN_ARGS=${TRAIN_ARGS:-}
RECON_ARGS=${RECON_ARGS:-}
PAPER_ARGS=${PAPER_ARGS:-}
mkdir -p "$RES" "$RUN_DIR"
START=$(date +%s)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$RES/gpu.txt" 2>&1

# Each run continues from its own committed checkpoint when there is one, else from $INIT.
INIT=${INIT-$CKPT_DIR/cliqueflowmer_eform.pt}
init_for() {  # $1 short name -> prints the checkpoint to start from (a copy: runs overwrite theirs)
  local own=$CKPT_DIR/cliqueflowmer_$1.pt src=
  if [ "${OWN_INIT:-1}" = 1 ] && [ -f "$own" ]; then src=$own
  elif [ -n "$INIT" ] && [ -f "$INIT" ]; then src=$INIT; fi
  [ -n "$src" ] && cp "$src" "$RUN_DIR/init_$1.pt" && echo "$RUN_DIR/init_$1.pt"
}
compile_args=()
[ "$COMPILE" = 1 ] && compile_args=(--compile)
# Parse the CIFs once, before two processes would race to write the same cache.
splits="'train', 'val', 'test'"
[ "${SKIP_TRAIN:-0}" = 1 ] && splits="'test',"
python -c "from ml.methods.cliqueflowmer.data import load_split
for s in ($splits): load_split(s)" > "$RES/cache.log" 2>&1

pipeline() {  # $1 property, $2 short name, $3 benchmark CPU workers
  local prop=$1 name=$2 workers=$3
  local ckpt=$CKPT_DIR/cliqueflowmer_$name.pt init
  local init_args=()
  init=$(init_for "$name") && init_args=(--init "$init")
  # SKIP_TRAIN=1: only the benchmarks, on the checkpoints as they are.
  if [ "${SKIP_TRAIN:-0}" != 1 ]; then
    python -m ml.methods.cliqueflowmer.train --property "$prop" --labels "$LABELS" \
      --out "$ckpt" --work-dir "$RUN_DIR/$name" --time-budget "$TRAIN_S" \
      --batch-size "$BATCH" --lr "$LR" --warmup-frac "$WARMUP_FRAC" --log-every 250 \
      --export-every 120 "${init_args[@]}" "${compile_args[@]}" $TRAIN_ARGS \
      > "$RES/train_$name.log" 2>&1
    cp "$RUN_DIR/$name/history.json" "$RES/history_$name.json"
  fi
  # Touch $RES/SKIP_BENCH while training runs to stop after it (benchmarks on another machine).
  [ -f "$RES/SKIP_BENCH" ] && return
  python benchmarks/cliqueflowmer_reconstruction.py --checkpoint "$ckpt" --n 500 \
    --guidance 0 2 4 --workers 2 --out "$RES/recon_$name.json" $RECON_ARGS \
    > "$RES/recon_$name.log" 2>&1 &
  python benchmarks/cliqueflowmer_paper.py --checkpoint "$ckpt" --n-seeds 10000 --steps 2000 \
    --workers "$workers" --eval-subset 500 --sun-subset 20 --relax-steps 100 \
    --relax-subset "${RELAX_SUBSET:-100}" \
    --deadline "$PAPER_S" --out "$RES/paper_$name.json" \
    --save-candidates "$RES/candidates_$name.npz" $PAPER_ARGS > "$RES/paper_$name.log" 2>&1 &
  wait
}

pipeline formation_energy eform 6 &
pipeline band_gap bandgap 6 &
wait
echo "total $(( $(date +%s) - START )) s" >> "$RES/gpu.txt"
touch "$RES/DONE"

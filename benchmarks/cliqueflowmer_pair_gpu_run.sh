#!/usr/bin/env bash
# CliqueFlowmer with pair geometry in the geometry decoder (train --pair-dim) on a lent GPU,
# one call (< 570 s in all):
#  1. train the formation-energy model with --pair-dim $PAIR_DIM (64) for TRAIN_S seconds, from
#     INIT (default: the released checkpoint; its pair values start at zero, so it starts as
#     that network; INIT= trains a fresh model) and, with BASELINE=1, a --pair-dim 0 twin from
#     the same INIT for the same time, side by side on the one GPU (equal time, equal share);
#  2. reconstruction at w = 0 / 2 / 4 on $N (500) MP-20 test crystals, each checkpoint
#     (benchmarks/cliqueflowmer_reconstruction.py, JSON written after every guidance value);
#  3. results in $OUT/cf_pair.tar.gz; the pair checkpoint in 15 MiB parts (a call returns files
#     of <= 16 MiB): cat cf_pair_eform.pt.part_* > cf_pair_eform.pt (RETURN_BASELINE=1: the
#     twin's too, cf_base_eform.pt.part_*).
#   carry: .whl .devpack .devdata/models (bash benchmarks/gpu_prepare.sh first); optional
#   .cache/cliqueflowmer (the parsed MP-20 splits: saves ~1 min of CIF parsing on the box).
# CPU smoke (tiny fresh models, one process at a time, ~2 min):
#   LOCAL=1 SERIAL=1 DEVICE=cpu INIT= TRAIN_S=15 N=4 WORKERS=1 \
#   TRAIN_ARGS="--tiny --limit 300 --batch-size 32 --eval-size 20" \
#   RECON_ARGS="--euler-steps 3 --beam 2" OUT=/tmp/cf_pair_smoke \
#   bash benchmarks/cliqueflowmer_pair_gpu_run.sh
set -uo pipefail
T0=$(date +%s)
source benchmarks/gpu_env.sh || exit 1  # LOCAL=1: this machine, as installed
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
O=${OUT:-/tmp/out}
R=$O/res; mkdir -p "$R"
N=${N:-500}; WORKERS=${WORKERS:-6}; DEVICE=${DEVICE:-cuda}
PAIR_DIM=${PAIR_DIM:-64}; BASELINE=${BASELINE:-1}; RETURN_BASELINE=${RETURN_BASELINE:-0}
INIT=${INIT-ml/weights/cliqueflowmer_eform.pt}
BATCH=${BATCH:-1024}; LR=${LR:-3e-4}; WARMUP_FRAC=${WARMUP_FRAC:-0.05}
RUN_DIR=${RUN_DIR:-.cache/cfpair}
# Extra arguments; later flags override earlier ones (COMPILE=1 adds --compile).
TRAIN_ARGS=${TRAIN_ARGS:-}; RECON_ARGS=${RECON_ARGS:-}
# A fresh start: train.py appends to its logs, and an old checkpoint must not pass for a new one.
rm -rf "$RUN_DIR/pair" "$RUN_DIR/base" "$RUN_DIR"/cf_*_eform.pt
mkdir -p "$RUN_DIR"
{ nvidia-smi -L 2>/dev/null || echo "$DEVICE"; } | tee "$R/device.txt"
# Parse the MP-20 splits once (cached under .cache/cliqueflowmer) before two readers start.
timeout 240 python3 -c 'from ml.methods.cliqueflowmer.data import load_split
for s in ("train", "val", "test"): print(s, len(load_split(s)))' > "$R/prepare.log" 2>&1
echo "prepared in $(( $(date +%s) - T0 )) s"
# 570 s per call; keep ~230 s for data loading, the end-of-run checks, reconstruction, the tar
# and the transfer. TRAIN_S counts training steps only (train.py --time-budget).
TRAIN_S=${TRAIN_S:-$(( 550 - ($(date +%s) - T0) - 230 ))}
[ "$TRAIN_S" -lt 30 ] && TRAIN_S=30
echo "training ${TRAIN_S} s per run" | tee -a "$R/device.txt"

init_args=()
[ -n "$INIT" ] && init_args=(--init "$INIT")
compile_args=()
[ "${COMPILE:-0}" = 1 ] && compile_args=(--compile)
train() {  # $1 name, $2 pair dim
  # timeout: a run that overshoots still leaves its periodic export (--export-every).
  # shellcheck disable=SC2086  # TRAIN_ARGS is a word list
  timeout $(( TRAIN_S + 150 )) python3 -m ml.methods.cliqueflowmer.train \
    --property formation_energy --labels oracle --pair-dim "$2" \
    --out "$RUN_DIR/cf_$1_eform.pt" --work-dir "$RUN_DIR/$1" --time-budget "$TRAIN_S" \
    --batch-size "$BATCH" --lr "$LR" --warmup-frac "$WARMUP_FRAC" --log-every 250 \
    --export-every 60 --eval-size 500 --device "$DEVICE" "${init_args[@]}" \
    "${compile_args[@]}" $TRAIN_ARGS > "$R/train_$1.log" 2>&1
  cp "$RUN_DIR/$1/history.json" "$R/history_$1.json" 2>/dev/null
  cp "$RUN_DIR/$1/train_log.jsonl" "$R/train_log_$1.jsonl" 2>/dev/null
}
runs=(pair)
[ "$BASELINE" = 1 ] && runs+=(base)
# SERIAL=1 runs the processes one after another (a CPU smoke on a shared machine).
bg() { if [ "${SERIAL:-0}" = 1 ]; then "$@"; else "$@" & fi; }
for name in "${runs[@]}"; do
  pd=$PAIR_DIM; [ "$name" = base ] && pd=0
  bg train "$name" "$pd"
done
wait
echo "trained at $(( $(date +%s) - T0 )) s"

LEFT=$(( 545 - ($(date +%s) - T0) ))
[ "$LEFT" -lt 60 ] && LEFT=60
recon() {  # $1 name
  # shellcheck disable=SC2086  # RECON_ARGS is a word list
  timeout $LEFT python3 benchmarks/cliqueflowmer_reconstruction.py \
    --checkpoint "$RUN_DIR/cf_$1_eform.pt" --n "$N" --guidance 0 2 4 \
    --workers "$WORKERS" --device "$DEVICE" --out "$R/recon_$1.json" $RECON_ARGS \
    > "$R/recon_$1.log" 2>&1
}
for name in "${runs[@]}"; do
  [ -f "$RUN_DIR/cf_${name}_eform.pt" ] || { echo "no checkpoint for $name"; continue; }
  bg recon "$name"
done
while [ -n "$(jobs -r)" ]; do
  sleep 20
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
done
wait
echo "total $(( $(date +%s) - T0 )) s" | tee -a "$R/device.txt"
tail -n 5 "$R"/*.log
for name in "${runs[@]}"; do
  [ "$name" = base ] && [ "$RETURN_BASELINE" != 1 ] && continue
  [ -f "$RUN_DIR/cf_${name}_eform.pt" ] &&
    split -b 15M "$RUN_DIR/cf_${name}_eform.pt" "$O/cf_${name}_eform.pt.part_"
done
tar -C "$R" -czf "$O/cf_pair.tar.gz" . && rm -rf "$R" && ls -la "$O"

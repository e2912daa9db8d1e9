#!/usr/bin/env bash
# CliqueFlowmer v2, reconstruction (issue 15) on a lent GPU, inference only, < 570 s in all:
#  1. reconstruction at w = 0 / 2 / 4 on 500 MP-20 test crystals, both checkpoints;
#  2. the decoding ablation on the formation-energy checkpoint (what costs the matches: atom
#     types, the length prior, the angles, integration steps, flow sampling noise, guidance,
#     z sampled vs mean, trained-on vs test materials; benchmarks/cliqueflowmer_recon_ablation.py).
# The three run side by side on the one GPU; each writes its JSON after every row, so a
# timeout keeps what was measured. Results: $OUT/cf_v2.tar.gz (one file).
#   carry: .whl .devpack .devdata/models (bash benchmarks/gpu_prepare.sh first); optional .cache/cliqueflowmer
#   (the parsed MP-20 splits: saves ~1 min of CIF parsing on the box).
# CPU smoke: N=4 WORKERS=1 DEVICE=cpu LOCAL=1 RECON_ARGS="--euler-steps 3 --guidance 2" \
#   VARIANTS="base+steps3 types+lattice+steps3 types+best2+steps3" \
#   bash benchmarks/cliqueflowmer_v2_gpu_run.sh
set -uo pipefail
T0=$(date +%s)
source benchmarks/gpu_env.sh || exit 1  # LOCAL=1: this machine, as installed
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
R=${OUT:-/tmp/out}/res; mkdir -p "$R"
N=${N:-500}; WORKERS=${WORKERS:-5}; DEVICE=${DEVICE:-cuda}
VARIANTS=${VARIANTS:-base types types+lengths types+lattice types+steps500 types+best4 types+w0 types+w4 sampled_z types@val}
{ nvidia-smi -L 2>/dev/null || echo "$DEVICE"; } | tee "$R/device.txt"
# Parse the MP-20 splits once (cached under .cache/cliqueflowmer) before three readers start.
timeout 240 python3 -c 'from ml.methods.cliqueflowmer.data import load_split
for s in ("test", "val"): print(s, len(load_split(s)))' > "$R/prepare.log" 2>&1
echo "prepared in $(( $(date +%s) - T0 )) s"
# 570 s per call, wheel install included; keep ~20 s for the tar and the transfer.
LEFT=$(( 550 - ($(date +%s) - T0) ))
for name in eform bandgap; do
  timeout $LEFT python3 benchmarks/cliqueflowmer_reconstruction.py \
    --checkpoint ml/weights/cliqueflowmer_$name.pt --n "$N" --guidance 0 2 4 \
    --workers "$WORKERS" --device "$DEVICE" --out "$R/recon_$name.json" ${RECON_ARGS:-} \
    > "$R/recon_$name.log" 2>&1 &
done
# shellcheck disable=SC2086  # VARIANTS is a word list
timeout $LEFT python3 benchmarks/cliqueflowmer_recon_ablation.py \
  --checkpoint ml/weights/cliqueflowmer_eform.pt --n "$N" --variants $VARIANTS \
  --workers "$WORKERS" --device "$DEVICE" --time-budget $(( LEFT - 90 )) \
  --out "$R/ablation_eform.json" > "$R/ablation_eform.log" 2>&1 &
while [ -n "$(jobs -r)" ]; do
  sleep 30
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
done
wait
echo "total $(( $(date +%s) - T0 )) s"
tail -n 12 "$R"/*.log
tar -C "$R" -czf "${OUT:-/tmp/out}/cf_v2.tar.gz" . && ls -la "${OUT:-/tmp/out}"

#!/usr/bin/env bash
# Issues 15 and 13 on a lent GPU, one call (< 570 s), jobs side by side:
#  1. CliqueFlowmer encode -> decode on $N (500) MP-20 test crystals, w = 0 / 2 / 4, with the
#     position anti-annealing s = 0, 5, 10 (one beam, one geometry), s = 5 keeping the most
#     self-consistent of 4 geometries per latent, and the service's 3 beams x 2 geometries
#     (benchmarks/cliqueflowmer_reconstruction.py);
#  2. then the paper protocol (benchmarks/cliqueflowmer_paper.py) at the service's decoding
#     (s = 5, 3 beams x 2 geometries; the 2026-12-05 eform row had one beam and one
#     geometry), for $CF_CKPT (the formation-energy release by default);
#     (RECON=0 skips step 1; CF_CKPT=ml/weights/cliqueflowmer_bandgap.pt for the band-gap rows)
#  3. with COND=1: the Wyckoff generator's 1,000 MP-20 test rows at the service's defaults
#     (redraw 6, chemistry space-group prior), composition + space group and composition only.
#   stage: WEIGHTS="cliqueflowmer_eform.pt conditional-wyckoff.pt" SEVENN=0 SQL=0 \
#          bash benchmarks/gpu_stage.sh
#   carry: .callpack .devpack .devdata/models .cache/conditional .cache/cliqueflowmer
# Results: $OUT/decode_rows.tar.gz (JSON + logs; the conditional samples as .npz).
# CPU smoke: LOCAL=1 DEVICE=cpu N=4 COND=0 PAPER_ARGS="--n-seeds 40 --steps 5 --eval-subset 8
#   --sun-subset 2 --relax-subset 2 --relax-steps 3 --compare-seeds 2 --compare-steps 4
#   --compare-points 0 4" OUT=/tmp/dr bash benchmarks/decode_rows_gpu_run.sh
set -uo pipefail
T0=$(date +%s)
source benchmarks/gpu_env.sh || exit 1
export PYTHONPATH=$PYTHONPATH:$PWD/benchmarks PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
O=${OUT:-/tmp/out}; R=$O/res; mkdir -p "$R"
N=${N:-500}; DEVICE=${DEVICE:-cuda}; COND=${COND:-1}; RECON=${RECON:-1}
CF_WORKERS=${CF_WORKERS:-6}; COND_WORKERS=${COND_WORKERS:-6}
CF_CKPT=${CF_CKPT:-ml/weights/cliqueflowmer_eform.pt}
CF_NAME=$(basename "$CF_CKPT" .pt)
PAPER_ARGS=${PAPER_ARGS:---n-seeds 10000 --steps 2000 --eval-subset 500 --sun-subset 20 \
--relax-steps 100 --relax-subset 100}
{ nvidia-smi -L 2>/dev/null || echo "$DEVICE"; } | tee "$R/device.txt"
left() { echo $(( ${CALL_S:-555} - ($(date +%s) - T0) )); }

cliqueflowmer() {
  # variant name, then reconstruction flags
  local one="--decode-beams 1 --geometry-samples 1"
  [ "$RECON" = 1 ] && for v in "s0:--anneal 0 $one" "s5:--anneal 5 $one" \
      "s10:--anneal 10 $one --guidance 2" \
      "s5k4:--anneal 5 --decode-beams 1 --geometry-samples 4 --guidance 2" \
      "b3k2:--anneal 5 --decode-beams 3 --geometry-samples 2"; do
    # shellcheck disable=SC2086  # the flags are a word list
    timeout "$(left)" python3 benchmarks/cliqueflowmer_reconstruction.py --checkpoint "$CF_CKPT" \
      --n "$N" --workers 4 --device "$DEVICE" --out "$R/recon_${CF_NAME}_${v%%:*}.json" ${v#*:} \
      > "$R/recon_${CF_NAME}_${v%%:*}.log" 2>&1
  done
  # shellcheck disable=SC2086  # PAPER_ARGS is a word list
  timeout "$(left)" python3 benchmarks/cliqueflowmer_paper.py --checkpoint "$CF_CKPT" \
    --workers "$CF_WORKERS" --deadline $(( $(left) - 25 )) --device "$DEVICE" $PAPER_ARGS \
    --out "$R/paper_${CF_NAME}.json" > "$R/paper_${CF_NAME}.log" 2>&1
}
cliqueflowmer &
if [ "$COND" = 1 ]; then
  timeout "$(left)" python3 benchmarks/conditional_wyckoff_paper.py \
    --wyckoff ml/weights/conditional-wyckoff.pt --n 1000 --geometry-samples 20 --workers "$COND_WORKERS" \
    --device "$DEVICE" --modes sg,comp --json "$R/conditional_1000.json" \
    --save "$R/conditional_1000.npz" > "$R/conditional_1000.log" 2>&1 &
fi
wait
echo "total $(( $(date +%s) - T0 )) s" | tee -a "$R/device.txt"
grep -h "^w=" "$R"/recon_*.log
tail -n 3 "$R"/paper_*.log
grep -E "^(sg|comp) " "$R/conditional_1000.log" 2>/dev/null | cut -c 1-600
tar -C "$R" -czf "$O/decode_rows.tar.gz" . && rm -rf "$R" && ls -la "$O"

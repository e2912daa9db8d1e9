#!/usr/bin/env bash
# Issue 17 on a lent GPU, one call (< 560 s): train the Crystal-GFN proxy on MP-20 train + val
# ($PROXY_MINUTES; or take an existing one, PROXY=...), then benchmarks/crystal_gfn_paper.py:
# train the paper-configuration GFlowNet ($GFN_MINUTES; or take GFN=...), $N samples and an
# untrained baseline, the MP-20 reference, and $ORACLE_N samples realised with the Wyckoff
# generator (CKPT_WYCKOFF, default ml/weights/conditional-wyckoff.pt), relaxed and scored by
# the pipeline. The benchmark stops at the call's deadline (LIMIT_S after setup); its sections
# are in bench.json as they finish.
# Everything lands in $OUT/crystal_gfn.tar.gz: crystal_gfn_proxy.pt (ml/weights/) with
# proxy.log + proxy_history.json, crystal_gfn-paper.pt (pretrained GFlowNet, ml/weights/),
# bench.json + bench.log, device.txt.
#   carry: .whl .devpack .devdata/models (bash benchmarks/gpu_prepare.sh first); optionally
#          .cache/crystal_gfn (MP-20 featurised on the CPU: saves ~30 s) and the Wyckoff
#          checkpoint if it is not tracked yet.
# Second call, the lab-suite rows (must-show 5) with the first call's weights (the method
# trains a GFlowNet per request, <= 120 s each: ~3 requests per call):
#   MODE=lab PROXY=<proxy.pt> GFN=<crystal_gfn-paper.pt> REQUESTS=eform_below_-2.5,... \
#     bash benchmarks/crystal_gfn_gpu_run.sh
# CPU smoke:  OUT=/tmp/gfn DEVICE=cpu LOCAL=1 WORKERS=1 PROXY_MINUTES=0.2 GFN_MINUTES=0.2 \
#             PROXY_ARGS="--limit 300 --d-model 32 --hidden 64" N=200 ORACLE_N=6 BATCH=32 \
#             BENCH_ARGS="--generator-steps 3" CKPT_WYCKOFF=/tmp/wyckoff-tiny.pt \
#             bash benchmarks/crystal_gfn_gpu_run.sh
set -uo pipefail
source benchmarks/gpu_env.sh || exit 1  # LOCAL=1: this machine, as installed
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
OUT=${OUT:-/tmp/out}; R=$OUT/res; mkdir -p "$R"
MODE=${MODE:-paper}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-14}
LIMIT_S=${LIMIT_S:-510}          # wall seconds for everything after the environment setup
PROXY_MINUTES=${PROXY_MINUTES:-1.5}; PROXY_ARGS=${PROXY_ARGS:-}
GFN_MINUTES=${GFN_MINUTES:-2.0}; BATCH=${BATCH:-512}
N=${N:-10000}; ORACLE_N=${ORACLE_N:-256}; LATTICE_MODES=${LATTICE_MODES:-gfn}
BENCH_ARGS=${BENCH_ARGS:-}
CKPT_WYCKOFF=${CKPT_WYCKOFF:-ml/weights/conditional-wyckoff.pt}
START=$(date +%s)
left() { echo $(( LIMIT_S - ($(date +%s) - START) - 15 )); }  # 15 s kept for the tarball
(nvidia-smi -L || echo "$DEVICE") > "$R/device.txt" 2>&1
[ -f "$CKPT_WYCKOFF" ] || echo "no Wyckoff checkpoint $CKPT_WYCKOFF: no oracle rows" >> "$R/device.txt"

if [ -n "${PROXY:-}" ]; then
  cp "$PROXY" "$R/crystal_gfn_proxy.pt"
else
  proxy_limit=$(python3 -c "print(int($PROXY_MINUTES * 60 + 90))")
  timeout "$proxy_limit" python3 -m ml.methods.crystal_gfn.train_proxy --device "$DEVICE" \
    --workers "$WORKERS" --minutes "$PROXY_MINUTES" --out "$R/crystal_gfn_proxy.pt" \
    --history "$R/proxy_history.json" $PROXY_ARGS > "$R/proxy.log" 2>&1
  echo "proxy rc=$? at $(( $(date +%s) - START )) s" >> "$R/device.txt"
  tail -n 1 "$R/proxy.log"
fi

if [ "$MODE" = lab ]; then
  # The method finds its weights in ml/weights/ (this box's copy of the tree only).
  cp "$R/crystal_gfn_proxy.pt" ml/weights/crystal_gfn_proxy.pt
  [ -n "${GFN:-}" ] && cp "$GFN" ml/weights/crystal_gfn-paper.pt
  [ -f ml/weights/conditional-wyckoff.pt ] || cp "$CKPT_WYCKOFF" ml/weights/conditional-wyckoff.pt
  timeout "$(left)" python3 benchmarks/lab_suite.py --device "$DEVICE" --methods crystal_gfn \
    --n "${LAB_N:-16}" ${REQUESTS:+--requests "$REQUESTS"} --out "$R/lab.json" \
    > "$R/lab.log" 2>&1
  echo "lab rc=$? total $(( $(date +%s) - START )) s" >> "$R/device.txt"
  grep -v '^spglib' "$R/lab.log" | tail -n 25
else
  gfn_args=()
  [ -n "${GFN:-}" ] && gfn_args=(--gfn "$GFN")
  wyckoff_args=()
  [ -f "$CKPT_WYCKOFF" ] && wyckoff_args=(--wyckoff "$CKPT_WYCKOFF")
  timeout "$(left)" python3 benchmarks/crystal_gfn_paper.py --proxy "$R/crystal_gfn_proxy.pt" \
    "${wyckoff_args[@]}" "${gfn_args[@]}" --save-gfn "$R/crystal_gfn-paper.pt" \
    --train-minutes "$GFN_MINUTES" --batch-size "$BATCH" --n "$N" --oracle-n "$ORACLE_N" \
    --lattice-modes "$LATTICE_MODES" --device "$DEVICE" --workers "$WORKERS" \
    --json "$R/bench.json" $BENCH_ARGS \
    > "$R/bench.log" 2>&1
  echo "bench rc=$? total $(( $(date +%s) - START )) s" >> "$R/device.txt"
  grep -v '^spglib\|^train \[' "$R/bench.log" | tail -n 20
fi
cat "$R/device.txt"
tar -C "$R" -czf "$OUT/crystal_gfn.tar.gz" . && ls -la "$OUT"

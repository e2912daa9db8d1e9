#!/usr/bin/env bash
# Oracles v2 on a lent GPU (one call, < 10 min): trains the band-gap oracle (two data variants
# side by side: MP-20 train + val, and the same plus mp2018 structures) and builds the hull
# tables of SevenNet-l3i5 (all data), CHGNet (all data) and SevenNet-0 (MP-20 test, for the
# stability benchmark), all at once on one GPU. Results land in $OUT/oracles.tar.gz.
#   carry: .whl .devdata (bash benchmarks/gpu_prepare.sh first)
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD MATDESIGN_DATA_DIR=$PWD/.devdata/data \
  MATDESIGN_MODELS_DIR=$PWD/.devdata/models PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
R=${OUT:-/tmp/out}/res; mkdir -p "$R"
GAP_MIN=${GAP_MIN:-4.5}; HULL_MIN=${HULL_MIN:-2}; LIMIT=${LIMIT:-}
lim=${LIMIT:+--limit $LIMIT}
nvidia-smi -L | tee "$R/device.txt"
python3 -c 'import torch, sevenn; print(torch.__version__, sevenn.__version__)'
timeout 500 python3 -m ml.training.train_gap --device cuda --minutes "$GAP_MIN" --workers 3 $lim \
  --out "$R/gap_a.pt" --log "$R/gap_a.jsonl" > "$R/gap_a.log" 2>&1 &
timeout 500 python3 -m ml.training.train_gap --device cuda --minutes "$GAP_MIN" --workers 3 $lim \
  --extra --out "$R/gap_b.pt" --log "$R/gap_b.jsonl" > "$R/gap_b.log" 2>&1 &
timeout 500 python3 -m ml.tools.build_hull_tables --model chgnet --device cuda --workers 3 $lim \
  --minutes "$HULL_MIN" --out-dir "$R" > "$R/hull_chgnet.log" 2>&1 &
timeout 500 python3 -m ml.tools.build_hull_tables --model sevennet-l3i5 --device cuda \
  --workers 4 $lim --minutes "$HULL_MIN" --out-dir "$R" > "$R/hull_l3i5.log" 2>&1 &
timeout 500 python3 -m ml.tools.build_hull_tables --model sevennet-0 --device cuda --workers 2 \
  --splits mp20/test $lim --minutes 0 --out-dir "$R" > "$R/hull_7net0.log" 2>&1 &
while [ -n "$(jobs -r)" ]; do sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done
wait
tail -n 4 "$R"/*.log
tar -C "$R" -czf "${OUT:-/tmp/out}/oracles.tar.gz" . && ls -la "${OUT:-/tmp/out}"

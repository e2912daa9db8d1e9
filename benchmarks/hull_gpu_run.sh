#!/usr/bin/env bash
# Reference hull tables on a lent GPU (one call, < 10 min): SevenNet-l3i5 and CHGNet side by
# side, static energies of every structure under the data dir, relaxed elemental references,
# static E_hull, then FIRE relaxation of the rows nearest the hull first until STOP_AFTER s.
# A later call continues the relaxation with RESUME=1 (tables carried in .hullwork/).
# Results land in $OUT/hull.tar.gz; copy hull_*.csv.gz to ml/evaluation/data/ and
# elemental_refs*.json to ml/oracles/data/.
#   carry: .whl .devpack .devdata/models (bash benchmarks/gpu_prepare.sh first) [.hullwork]
set -uo pipefail
source benchmarks/gpu_env.sh || exit 1
R=${OUT:-/tmp/out}/res; mkdir -p "$R"
STOP_AFTER=${STOP_AFTER:-470}; MODELS=${MODELS:-"sevennet-l3i5 chgnet"}; LIMIT=${LIMIT:-}
lim=${LIMIT:+--limit $LIMIT}
nvidia-smi -L | tee "$R/device.txt"
for m in $MODELS; do
  case $m in
    chgnet) opts="--workers 6 --batch-size 512 --relax-batch 512" ;;
    *) opts="--workers 8 --batch-size 256 --relax-batch 256" ;;
  esac
  resume=""
  [ "${RESUME:-0}" = 1 ] && resume="--resume .hullwork/hull_$m.csv.gz"
  timeout $((STOP_AFTER + 80)) python3 -m ml.tools.build_hull_tables --model "$m" --device cuda \
    $opts $lim $resume --minutes 60 --relax-steps 200 --stop-after "$STOP_AFTER" \
    --out-dir "$R" > "$R/hull_$m.log" 2>&1 &
done
while [ -n "$(jobs -r)" ]; do sleep 30; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done
wait
tail -n 6 "$R"/*.log
tar -C "$R" -czf "${OUT:-/tmp/out}/hull.tar.gz" . && ls -la "${OUT:-/tmp/out}"

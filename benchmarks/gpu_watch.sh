#!/usr/bin/env bash
# Wait (at most $2 seconds) for a detached GPU run writing into $1 to touch $1/DONE, then copy
# what it has so far to $OUT: the small files as one archive, and each file named in $3...
# (checkpoints) as it is. Prints the tail of every log meanwhile.
#   bash benchmarks/gpu_watch.sh /tmp/cf 560 ml/weights/cliqueflowmer_eform.pt
set -u
RES=$1 WAIT_S=$2
shift 2
end=$(( $(date +%s) + WAIT_S ))
while [ ! -f "$RES/DONE" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 5; done
for f in "$RES"/*.log; do echo "== $f"; tail -n 4 "$f" | cut -c1-400; done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
[ -f "$RES/DONE" ] && echo "RUN DONE" || echo "RUN STILL GOING"
tar -czf "$OUT/results.tar.gz" -C "$(dirname "$RES")" "$(basename "$RES")"
for f in "$@"; do [ -f "$f" ] && cp "$f" "$OUT/"; done
ls -la "$OUT"

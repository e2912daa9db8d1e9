#!/usr/bin/env bash
# Several benchmarks in one lent-GPU call, side by side on the one GPU (the call's 64 MiB and
# the session's device time are what limit GPU work here, not the H200):
#   - Crystal-GFN (issue 17): benchmarks/crystal_gfn_gpu_run.sh with a proxy and a GFlowNet
#     trained beforehand (PROXY, GFN): 10,000 samples and the oracle rows on relaxed crystals;
#   - MatInvent (issue 16): benchmarks/matinvent_gpu_run.sh, prior pretrained here
#     ($MI_MINUTES; its 7 MiB do not fit the call's carry), then the four Table 1 tasks;
#   - the lab suite (issue 12): one benchmarks/lab_suite.py process per method in $LAB_METHODS,
#     relaxed and judged by the GPU default (SevenNet-l3i5), the band-gap requests first.
# Each part writes under $WORK/<part>/ as it goes; all stop by $CALL_S seconds. Only 8 files
# come back from $OUT (device README, Limits): everything is packed into $OUT/wave.tar.gz
# (a first run lost MatInvent's results and two lab-suite tables to that limit).
#   carry: .whl (sevenn stripped of SevenNet-0; no sqlalchemy needed) .devpack .cache/conditional
set -uo pipefail
T0=$(date +%s)
source benchmarks/gpu_env.sh || exit 1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
OUT=${OUT:-/tmp/out}; CALL_S=${CALL_S:-390}; WORK=/tmp/wave
LAB_METHODS=${LAB_METHODS:-substitution,smoacs,conditional}; LAB_N=${LAB_N:-16}
# LAB_SPLIT: processes per method, each with a share of the requests (or per method in
# LAB_METHODS as method:processes; LAB_REQUESTS_<method> replaces LAB_REQUESTS for one); LAB_ARGS: more lab_suite.py arguments (e.g. --oversample 4).
LAB_SPLIT=${LAB_SPLIT:-1}; LAB_ARGS=${LAB_ARGS:-}; MI_STEPS=${MI_STEPS:-pretrain,bench}
LAB_REQUESTS=${LAB_REQUESTS:-gap1.5_eform_nontoxic,gap3.0_eform_nontoxic,known_ZnO_186,known_MgAl2O4_227,eform_below_-2.5,LiMnO_min_ehull,known_TiO2_136,known_LiFePO4_62,density_11,hhi_below_1250,perovskite_gap2.0}
left() { echo $(( CALL_S - ($(date +%s) - T0) )); }
mkdir -p "$WORK/lab" "$WORK/gfn" "$WORK/mi"
nvidia-smi -L > "$WORK/device.txt" 2>&1
echo "setup done at $(( $(date +%s) - T0 )) s" >> "$WORK/device.txt"
if [ -n "${PROXY:-}" ]; then
  (OUT=$WORK/gfn LIMIT_S=$(( $(left) - 10 )) WORKERS=4 bash benchmarks/crystal_gfn_gpu_run.sh \
    > "$WORK/gfn/run.log" 2>&1) &
fi
if [ -n "${MI_MINUTES:-}" ]; then
  (OUT=$WORK/mi MINUTES=$MI_MINUTES STEPS=$MI_STEPS CALL_S=$(( $(left) - 10 )) WORKERS=6 \
    bash benchmarks/matinvent_gpu_run.sh > "$WORK/mi/run.log" 2>&1) &
fi
for ms in ${LAB_METHODS//,/ }; do
  m=${ms%%:*}; split=$LAB_SPLIT; [ "$ms" != "$m" ] && split=${ms#*:}  # method:processes
  own=LAB_REQUESTS_$m  # e.g. LAB_REQUESTS_crystal_gfn: this method's requests only
  own_args=LAB_ARGS_$m  # e.g. LAB_ARGS_matinvent='--params {"iterations":8}' (no spaces)
  IFS=, read -r -a reqs <<< "${!own:-$LAB_REQUESTS}"
  for ((i = 0; i < split; i++)); do
    share=$(for ((j = i; j < ${#reqs[@]}; j += split)); do printf '%s,' "${reqs[j]}"; done)
    [ -n "$share" ] || continue
    (timeout $(( $(left) - 10 )) python3 benchmarks/lab_suite.py --device cuda --relax \
      --n "$LAB_N" --methods "$m" --requests "${share%,}" --out "$WORK/lab/lab_${m}_$i.json" \
      $LAB_ARGS ${!own_args:-} > "$WORK/lab/lab_${m}_$i.log" 2>&1) &
  done
done
wait
echo "all done at $(( $(date +%s) - T0 )) s" >> "$WORK/device.txt"
cat "$WORK/device.txt"; grep -h "sun_hit" "$WORK"/lab/*.log | cut -c1-200
tail -n 4 "$WORK/gfn/run.log" "$WORK/mi/run.log" 2>/dev/null
# The Wyckoff decomposition built here (MatInvent's pretraining) saves the next call its time.
[ -d .cache/conditional ] && cp -r .cache/conditional "$WORK/cache_conditional"
tar -C "$WORK" -czf "$OUT/wave.tar.gz" . && ls -la "$OUT"

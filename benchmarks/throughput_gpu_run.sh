#!/usr/bin/env bash
# Issue 20 on a lent GPU, one call (< 570 s): the 1,024-candidate smoacs and conditional jobs
# through the runner (benchmarks/job_profile.py), SMOACS's method alone with its variants
# (benchmarks/step_profile.py --smoacs-variants), then uniqueness + novelty by process count
# (benchmarks/identity_throughput.py). Results in $OUT/throughput.tar.gz, packed after each part.
#   WEIGHTS="conditional-wyckoff.pt bandgap_chgnet.pt" SEVENN=1 SQL=1 \
#     DROP=app/web/static/vendor/3dmol/3Dmol-min.js bash benchmarks/gpu_stage.sh
#   carry: .callpack .devpack .devdata/models;  afterwards: bash benchmarks/gpu_stage.sh restore
# CPU smoke: DEVICE=cpu N=2 METHODS=substitution VARIANTS= IDENTITY_N=64 PROCS="0 2" \
#            JOBS_S=300 bash benchmarks/throughput_gpu_run.sh
set -uo pipefail
start=$SECONDS
if [ -f .callpack/site.tar.xz ]; then source benchmarks/gpu_env.sh || exit 1; else export PYTHONPATH=$PWD; fi
export PYTHONPATH=$PYTHONPATH:$PWD/benchmarks PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
O=${OUT:-/tmp/out}; R=$O/res; mkdir -p "$R"
DEVICE=${DEVICE:-cuda}; N=${N:-1024}; METHODS=${METHODS:-smoacs,conditional}
VARIANTS=${VARIANTS-tf32 fill nondeterministic}; IDENTITY_N=${IDENTITY_N:-1024}
PROCS=${PROCS:-0 4 8}; JOBS_S=${JOBS_S:-340}; TOTAL_S=${TOTAL_S:-560}
# Per-method params of the jobs, JSON, e.g. '{"smoacs": {"refine_rounds": 0}}' (gradient stage
# only: the judged refinement became SMOACS's default in the ninth session).
METHOD_PARAMS=${METHOD_PARAMS:-"{}"}
pack() { tar -C "$R" -czf "$O/throughput.tar.gz" . ; }
(nvidia-smi -L 2>/dev/null || echo "$DEVICE"; nproc) > "$R/device.txt"
timeout "$JOBS_S" python3 benchmarks/job_profile.py --methods "$METHODS" --n "$N" \
  --device "$DEVICE" --no-profile --method-params "$METHOD_PARAMS" --out "$R/jobs" \
  > "$R/jobs.log" 2>&1
echo "jobs exit $? after $((SECONDS - start)) s"; grep -v -i warn "$R/jobs.log" | tail -n 12; pack
left=$((TOTAL_S - 60 - (SECONDS - start)))
if [ -n "$VARIANTS" ] && [ "$left" -gt 60 ]; then
  # shellcheck disable=SC2086
  timeout "$left" python3 benchmarks/step_profile.py --device "$DEVICE" --n "$N" --profile-steps 0 \
    --smoacs-variants $VARIANTS --no-relax --out "$R/step_profile_variants.json" > "$R/step.log" 2>&1
  echo "step_profile exit $? after $((SECONDS - start)) s"; grep -i "^smoacs" "$R/step.log"; pack
fi
left=$((TOTAL_S - (SECONDS - start)))
# shellcheck disable=SC2086
[ "$left" -gt 20 ] && timeout "$left" python3 benchmarks/identity_throughput.py --n "$IDENTITY_N" \
  --processes $PROCS --out "$R/identity.json" 2>&1 | grep '^{'
pack; echo "done after $((SECONDS - start)) s"; ls -la "$O"

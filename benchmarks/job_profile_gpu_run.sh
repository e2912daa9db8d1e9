#!/usr/bin/env bash
# Whole-job profile on a lent GPU (issue 20), one call < 570 s: smoacs, conditional and
# substitution jobs with relax: true at 256 then 1,024 candidates through the real runner
# (benchmarks/job_profile.py), per-phase timings + cProfile top. Results (json, per-job
# profiles, log) land in $OUT/job_profile.tar.gz, saved after every job.
#   carry: .whl .devpack .devdata/models (bash benchmarks/gpu_prepare.sh first)
# METHOD_PARAMS='{"smoacs": {"batch_size": 1024}}' sets per-method params; NO_PROFILE=1 plain
# wall times.
# CPU smoke: DEVICE=cpu N1=2 N2= METHODS=substitution BUDGET=400 bash benchmarks/job_profile_gpu_run.sh
set -uo pipefail
O=${OUT:-/tmp/out}; R=$O/res; mkdir -p "$R"
if [ -f .callpack/site.tar.xz ] || ls .whl/*.whl > /dev/null 2>&1; then
  source benchmarks/gpu_env.sh || exit 1
else  # this CPU machine: the installed environment and the shared data
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
DEVICE=${DEVICE:-cuda}; METHODS=${METHODS:-smoacs,conditional,substitution}
N1=${N1:-256}; N2=${N2-1024}; BUDGET=${BUDGET:-500}; MP=${METHOD_PARAMS:-'{}'}
start=$SECONDS
(nvidia-smi -L 2>/dev/null || echo "no nvidia-smi") | tee "$R/device.txt"
pack() { tar -C "$R" -czf "$O/job_profile.tar.gz" . ; }
# 256-candidate jobs first (all methods), then 1,024: a timeout still leaves the small table.
for n in $N1 $N2; do
  left=$((BUDGET - (SECONDS - start)))
  [ "$left" -lt 30 ] && break
  timeout "$left" python3 benchmarks/job_profile.py --methods "$METHODS" --n "$n" \
    --device "$DEVICE" --top 30 --out "$R/n$n" --method-params "$MP" \
    ${NO_PROFILE:+--no-profile} > "$R/n$n.log" 2>&1
  echo "n=$n exit $? after $((SECONDS - start)) s"; tail -n 8 "$R/n$n.log"; pack
done
pack; ls -la "$O"

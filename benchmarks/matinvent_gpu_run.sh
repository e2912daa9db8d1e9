#!/usr/bin/env bash
# Issue 16 on a lent GPU, one call (< 560 s): pretrain MatInvent's prior (the template policy)
# on MP-20 train + val for $MINUTES, then benchmarks/matinvent_paper.py: the paper's four
# Table 1 tasks, MatInvent vs plain prior sampling, 8 runs in parallel until the call's time
# is nearly spent (must-shows 1-2). A second call can run the job through the runner with a
# budget of 512 oracle calls (must-show 3): STEPS=job PRIOR=<the returned prior>.
# Everything lands in $OUT/matinvent.tar.gz: matinvent-prior.pt + pretrain.log +
# pretrain_history.json (model card), bench.json + bench.log + runs/*.json (written every
# iteration), plots/matinvent_rl_curves.png (when the box has matplotlib; otherwise re-draw
# here with --plot-only), job.json + job.log, device.txt.
#   carry: .whl .devpack .devdata/models (bash benchmarks/gpu_prepare.sh first), the Wyckoff
#          checkpoint (CKPT_WYCKOFF, default ml/weights/conditional-wyckoff.pt) and, if built,
#          .cache/conditional (the Wyckoff decomposition of MP-20; saves ~40 s of pretraining)
# Env: CKPT_WYCKOFF, PRIOR (an existing prior: no pretraining), MINUTES (3), STEPS
#      (pretrain,bench | job | pretrain,bench,job), BUDGET (1000 oracle calls per run), BATCH
#      (32, as the paper), TASKS, RELAX (1: the paper's filter, E_hull <= 0.1 after
#      relaxation; 0: E_hull of the generated crystal, which a CPU check found >= 0.3 eV/atom
#      for all of 27 crystals),
#      PARAMS (matinvent params as JSON; default relax_steps 100 for the filter's FIRE),
#      JUDGE (chgnet-energy; empty: the service's default judge for the device), GPUS (all
#      the box has: runs go round-robin on them), CALL_S (520: seconds this script may use),
#      BENCH_ARGS, TRAIN_ARGS, LIMIT (tiny runs).
# CPU smoke:  OUT=/tmp/mi_smoke LOCAL=1 DEVICE=cpu MINUTES=0.2 LIMIT=100 CALL_S=500 BUDGET=8 \
#   BATCH=6 TASKS=density STEPS=pretrain,bench,job RELAX=0 JUDGE= JOB_BUDGET=4 JOB_BATCH=6 \
#   PARAMS='{"flow_steps": 4, "max_energy_above_hull": 10}' BENCH_ARGS='--threads 1' \
#   TRAIN_ARGS="--d-model 32 --hidden 32 --samples 50" bash benchmarks/matinvent_gpu_run.sh
set -uo pipefail
T0=$(date +%s)
source benchmarks/gpu_env.sh || exit 1  # LOCAL=1: this machine, as installed
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
OUT=${OUT:-/tmp/out}; R=$OUT/res; mkdir -p "$R/plots" "$R/runs"
DEVICE=${DEVICE:-cuda}; MINUTES=${MINUTES:-3}; WORKERS=${WORKERS:-14}
STEPS=${STEPS:-pretrain,bench}; CALL_S=${CALL_S:-520}
BUDGET=${BUDGET:-1000}; BATCH=${BATCH:-32}; RELAX=${RELAX:-1}
PARAMS=${PARAMS:-'{"relax_steps": 100}'}; JUDGE=${JUDGE-chgnet-energy}
GPUS=${GPUS:-$(nvidia-smi -L 2>/dev/null | grep -c GPU)}; [ "${GPUS:-0}" -ge 1 ] || GPUS=1
TASKS=${TASKS:-band_gap,formation_energy,density,hhi}
# The job ends at its budget or after JOB_ITERATIONS (so it ends inside the call's time).
JOB_BUDGET=${JOB_BUDGET:-512}; JOB_BATCH=${JOB_BATCH:-64}; JOB_ITERATIONS=${JOB_ITERATIONS:-8}
CKPT_WYCKOFF=${CKPT_WYCKOFF:-ml/weights/conditional-wyckoff.pt}; PRIOR=${PRIOR:-}
LIMIT=${LIMIT:-}; TRAIN_ARGS=${TRAIN_ARGS:-}; BENCH_ARGS=${BENCH_ARGS:-}
pack() { tar -C "$R" -czf "$OUT/matinvent.tar.gz" . ; }
left() { echo $(( CALL_S - ($(date +%s) - T0) )); }
(nvidia-smi -L 2>/dev/null || echo "$DEVICE") > "$R/device.txt"
[ -f "$CKPT_WYCKOFF" ] || { echo "no Wyckoff checkpoint at $CKPT_WYCKOFF" | tee -a "$R/device.txt"; pack; exit 1; }
relax_arg=(); [ "$RELAX" = 1 ] && relax_arg=(--relax)
judge_arg=(); [ -n "$JUDGE" ] && judge_arg=(--judge "$JUDGE")
lim=${LIMIT:+--limit $LIMIT}

if [ -n "$PRIOR" ]; then
  cp "$PRIOR" "$R/matinvent-prior.pt"
elif [[ ",$STEPS," == *",pretrain,"* ]]; then
  timeout $(python3 -c "print(int($MINUTES * 60 + 240))") python3 -m ml.methods.matinvent.pretrain \
    --device "$DEVICE" --minutes "$MINUTES" --workers "$WORKERS" --out "$R/matinvent-prior.pt" \
    --history "$R/pretrain_history.json" $lim $TRAIN_ARGS > "$R/pretrain.log" 2>&1
  echo "pretrain rc=$? at $(( $(date +%s) - T0 )) s" | tee -a "$R/device.txt"
  grep -v '^spglib' "$R/pretrain.log" | tail -n 3
  pack
fi
[ -f "$R/matinvent-prior.pt" ] || { echo "no prior" | tee -a "$R/device.txt"; pack; exit 1; }
ckpts=(--prior "$R/matinvent-prior.pt" --wyckoff "$CKPT_WYCKOFF")

if [[ ",$STEPS," == *",bench,"* ]]; then
  reserve=30; [[ ",$STEPS," == *",job,"* ]] && reserve=$(( $(left) / 2 ))
  deadline=$(( $(left) - reserve ))
  timeout $(( deadline + 25 )) python3 benchmarks/matinvent_paper.py --device "$DEVICE" \
    --tasks "$TASKS" --budget "$BUDGET" --batch "$BATCH" --deadline-s "$deadline" \
    --gpus "$GPUS" --params "$PARAMS" "${ckpts[@]}" "${relax_arg[@]}" "${judge_arg[@]}" \
    --out-dir "$R/runs" --json "$R/bench.json" \
    --plot "$R/plots/matinvent_rl_curves.png" $BENCH_ARGS > "$R/bench.log" 2>&1
  echo "bench rc=$? at $(( $(date +%s) - T0 )) s" | tee -a "$R/device.txt"
  grep -v -e '^spglib' -e 'CHGNet v' "$R/bench.log" | tail -n 16
  pack
fi

if [[ ",$STEPS," == *",job,"* ]]; then
  deadline=$(( $(left) - 25 ))
  timeout $(( deadline + 20 )) python3 benchmarks/matinvent_paper.py --device "$DEVICE" \
    --tasks "" --job --job-budget "$JOB_BUDGET" --job-deadline-s "$deadline" \
    --batch "$JOB_BATCH" --iterations "$JOB_ITERATIONS" --params "$PARAMS" "${ckpts[@]}" \
    "${relax_arg[@]}" "${judge_arg[@]}" \
    --json "$R/job.json" $BENCH_ARGS \
    > "$R/job.log" 2>&1
  echo "job rc=$? at $(( $(date +%s) - T0 )) s" | tee -a "$R/device.txt"
  grep -v -e '^spglib' -e 'CHGNet v' "$R/job.log" | tail -n 4
fi
pack; ls -la "$OUT"

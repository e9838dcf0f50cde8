#!/usr/bin/env bash
# One session on a lent GPU machine (one NVIDIA H100/H200, 16 cores), as one script:
#   1. GPU parity and latency (bench/gpu_parity.py) and `streamtmr bench` with torch-cuda;
#   2. the studies of configs/studies.yaml trained on the GPU, all at once, until a deadline
#      (runs not finished by then keep their last checkpoint and resume on the next call).
# Results land in $OUT (bench JSON, logs, one tarball per group of runs).
#
#   OUT=/tmp/out bash bench/gpu_session.sh [TOTAL_SECONDS]
#
# Wheels for what the image lacks (pyzmq, python-osc) are read from .whl/ when present.
set -u
TOTAL=${1:-570}
OUT=${OUT:-/tmp/streamtmr-gpu}
mkdir -p "$OUT/bench"
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
log() { echo "[$(el) s] $*" | tee -a "$OUT/log.txt"; }
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$OUT/log.txt"
python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, torch.version.cuda,
torch.cuda.get_device_name(0), '| onnxruntime', o.__version__, o.get_available_providers())" \
  2>&1 | tee -a "$OUT/log.txt"

# The training store, generated while the benchmarks run (one core of 16).
python3 -m streamtmr data synth --out data/synthkinect --no-progress ${SYNTH_ARGS:-} >"$OUT/synth.log" 2>&1 &
SYNTH=$!

log "gpu parity + latency"
timeout 80 python3 -m bench.gpu_parity --cell-s 0.5 --out "$OUT/gpu_parity.json" \
  --models default,tmr-paper,pmr-small,moon-resnet-small,naive 2>&1 | tee -a "$OUT/log.txt"
log "streamtmr bench (torch-cuda, onnxruntime)"
timeout 100 python3 -m streamtmr bench --engines torch-cuda,onnxruntime --duration 0.5 \
  --batches 1,2,4,8 --save --results-dir "$OUT/bench" 2>&1 | tail -n 60 | tee -a "$OUT/log.txt"

wait $SYNTH; log "synth done: $(tail -n 1 "$OUT/synth.log")"
LEFT=$(( TOTAL - $(el) - 45 ))
log "studies: deadline ${LEFT} s"
python3 -m streamtmr study train configs/studies.yaml --data data/synthkinect --jobs 32 \
  --device cuda --set train.num_threads=1 --deadline "$LEFT" --json "$OUT/study.json" \
  >"$OUT/study.log" 2>&1 &
STUDY=$!
# A run that fails on CUDA in its first minute is retried on the CPU (16 cores) instead.
sleep 75
FAILED=$(grep -lE "Traceback|: error:" runs/studies/*/train.log 2>/dev/null | xargs -r -n1 dirname \
  | xargs -r -n1 basename | paste -sd, -)
if [ -n "$FAILED" ]; then
  log "failed on CUDA, retrying on CPU: $FAILED"
  grep -h -B2 -A12 "Traceback" runs/studies/*/train.log | head -n 60 >>"$OUT/log.txt"
  python3 -m streamtmr study train configs/studies.yaml --data data/synthkinect --jobs 16 \
    --only "$FAILED" --out runs/studies-cpu --device cpu --set train.num_threads=1 \
    --deadline $(( LEFT - 80 )) >"$OUT/study-cpu.log" 2>&1 &
fi
wait
log "studies stopped"; cat "$OUT/study.log" | tail -n 40 | tee -a "$OUT/log.txt"
python3 -m streamtmr study list configs/studies.yaml | tee -a "$OUT/log.txt"

# Bring back the final models, configs and logs; resume points only for unfinished runs.
pack() {  # pack NAME GLOB...
  local name=$1; shift; local files=()
  for d in "$@"; do
    [ -d "$d" ] || continue
    for f in model.safetensors config.yaml metrics.jsonl log.jsonl train.log; do
      [ -f "$d/$f" ] && files+=("$d/$f")
    done
    if [ ! -f "$d/model.safetensors" ] && [ -f "$d/checkpoints/last.safetensors" ]; then
      files+=("$d/checkpoints/last.safetensors" "$d/checkpoints/last.optim.safetensors")
      ls "$d"/checkpoints/last.json >/dev/null 2>&1 && files+=("$d/checkpoints/last.json")
    fi
  done
  [ ${#files[@]} -gt 0 ] && tar czf "$OUT/$name.tar.gz" "${files[@]}"
}
pack runs-ablation runs/studies/tmr-full runs/studies/tmr-no-* runs/studies/tmr-identity-* \
  runs/studies/tmr-tokens-*
pack runs-tmr-other runs/studies/tmr-adv-* runs/studies/tmr-default-*
pack runs-baselines runs/studies/dmr-* runs/studies/pmr-* runs/studies/moon-* runs/studies-cpu/*
ls -la "$OUT" | tee -a "$OUT/log.txt"
log "done"

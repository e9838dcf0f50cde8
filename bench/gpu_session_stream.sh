#!/usr/bin/env bash
# One GPU lease (15 minutes, of which about 10 are left once the machine is up) for the
# streaming models, as one script:
#   0. the CUDA engine tests (tests/test_engines.py -k cuda);
#   1. GPU parity of the shipped `default` and `matcher` against PyTorch CPU float32
#      (bench.gpu_parity: torch-cuda eager and CUDA graphs, ONNX Runtime CUDA where installed;
#      windows through the parallel form, and six bodies stepped frame by frame as the node does);
#   2. their step latency on torch-cuda, onnxruntime-cuda and ONNX Runtime CPU
#      (bench.step, 1 / 6 / 32 / 256 bodies per call, >= 600 calls a cell);
#   3. paper-size StreamTMRs trained on the GPU (CONFIGS, one or more side by side; by default
#      configs/tmr_stream_paper_lease.yaml: the shipped default's recipe at the paper preset), the
#      three stages of each scaled to the time left in the proportions of the config's own
#      iterations: a short calibration run (all configs at once) measures each stage's seconds
#      per iteration first. Each run and its tarball are named after its config. The first
#      lease's model met the utility aims but not the privacy ones; the second trained the
#      verifier ablation side by side and starved it (pairs rendered in the training process;
#      docs/training.md, "The second run"). The next lease's candidate, alone:
#      CONFIGS=configs/tmr_stream_paper_ver_lease.yaml (pairs now in data.pair_workers)
# Everything lands in $OUT: the JSON records, the logs, and the trained model with its config
# and logs (evaluate it on any machine with `streamtmr evaluate --models ...`).
#
#   OUT=/tmp/out bash bench/gpu_session_stream.sh [TOTAL_SECONDS]
#
# DEVICE=cpu runs the same steps on the CPU with ONNX Runtime only: a dry run of the script.
# tests/test_bench.py runs it so with MODELS=default PRESET=tiny on a tiny store (DATA=...).
set -u
TOTAL=${1:-540}
OUT=${OUT:-/tmp/streamtmr-gpu}
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-data/synthkinect}
MODELS=${MODELS:-default matcher}
PRESET=${PRESET:-paper}                 # the model preset trained (tiny: the dry run)
CONFIGS=${CONFIGS:-${CONFIG:-configs/tmr_stream_paper_lease.yaml}}   # one or more
RUNS=${RUNS:-runs}                      # where the calibration and the trained run go
PY=${PYTHON:-python3}
mkdir -p "$OUT/bench"
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
log() { echo "[$(el) s] $*" | tee -a "$OUT/log.txt"; }
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
# Wheels for what the device's image lacks (pyzmq, python-osc, ...) are read from .whl/ when
# present (as bench/gpu_session.sh does); the repository itself is on the path.
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
if [ "$DEVICE" = cuda ]; then
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" \
    || exit 3
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$OUT/log.txt"
  # the GPU back ends this machine has (naming an absent one to bench.step is an error; the
  # 2026-12-04 lease lost its step bench so: that image's onnxruntime has no CUDA provider)
  ENGINES=$($PY - <<'EOF' 2>>"$OUT/log.txt"
import sys
from engines import unavailable_reason
for name in ("tensorrt", "onnxruntime-cuda", "torch-cuda"):
    if why := unavailable_reason(name):
        print(f"skipped {name}: {why}", file=sys.stderr)
    else:
        print(name, end=" ")
print("onnxruntime@1")
EOF
)
  BODIES="1 6 32 256"
  ENGINES=${STEP_ENGINES:-$ENGINES}         # e.g. torch-cuda alone, where the CPU rows are known
else
  ENGINES="onnxruntime@1"; BODIES="1 6"
fi
$PY -c "import torch, onnxruntime as o; print('torch', torch.__version__, torch.version.cuda,
'| onnxruntime', o.__version__, o.get_available_providers())" 2>&1 | tee -a "$OUT/log.txt"

# The training store, generated while the benchmarks run.
SYNTH=""
if [ ! -f "$DATA/meta.json" ]; then
  $PY -m streamtmr data synth --out "$DATA" --no-progress ${SYNTH_ARGS:-} >"$OUT/synth.log" 2>&1 &
  SYNTH=$!
fi

if [ "$DEVICE" = cuda ]; then
  log "CUDA engine tests"
  timeout 90 $PY -m pytest -q -p no:cacheprovider tests/test_engines.py -k cuda 2>&1 \
    | tail -n 15 | tee -a "$OUT/log.txt"
  log "gpu parity + latency: $MODELS"
  timeout 120 $PY -m bench.gpu_parity --cell-s 0.3 --models "${MODELS// /,}" \
    --out "$OUT/bench/gpu-parity-stream.json" 2>&1 | tail -n 30 | tee -a "$OUT/log.txt"
fi
log "step latency: $MODELS on $ENGINES"
timeout 180 $PY -m bench.step --models $MODELS --engines $ENGINES --bodies $BODIES \
  --cell-s 0.3 --out "$OUT/bench/step-stream-$DEVICE.json" 2>&1 | grep -v Warn \
  | tail -n 20 | tee -a "$OUT/log.txt"

[ -n "$SYNTH" ] && wait "$SYNTH"; log "store: $(ls "$DATA" | tr '\n' ' ')"

# Training: calibrate each stage's cost, then fill the time left. Several CONFIGS train side by
# side (one process each, sharing the GPU); they are calibrated side by side too, so each one's
# measured cost includes the others' load.
CAL=${CAL_ITERS:-60}
calibrate() {                               # CONFIG NAME
  rm -rf "$RUNS/calibration-$2"
  timeout 150 $PY -m streamtmr train --config "$1" --data "$DATA" --device "$DEVICE" \
    --out "$RUNS/calibration-$2" --set model.preset=$PRESET \
    --set "train.stages[0].iterations=$CAL" --set "train.stages[1].iterations=$CAL" \
    --set "train.stages[2].iterations=$CAL" --set train.log_every=$(( CAL >= 12 ? CAL / 6 : 2 )) \
    --set train.val_every=100000 --set data.max_val_windows=64 >"$OUT/calibration-$2.log" 2>&1
}
iterations() {                              # LEFT CONFIG NAME -> three iteration counts
  $PY - "$1" "$RUNS/calibration-$3/metrics.jsonl" "$2" 2>>"$OUT/log.txt" <<'EOF'
import json, sys
import yaml
left, path, config = float(sys.argv[1]), sys.argv[2], sys.argv[3]
rows = [json.loads(x) for x in open(path) if '"split"' not in x]
cost = {}                                  # seconds per iteration, per stage, warm-up excluded
for name in ("encoders", "decoder", "end_to_end"):
    r = [x for x in rows if x.get("stage") == name and "time" in x]
    if len(r) < 3:
        sys.exit(f"calibration: stage {name} logged {len(r)} rows")
    cost[name] = (r[-1]["time"] - r[1]["time"]) / (r[-1]["step"] - r[1]["step"])
# the config's own schedule, scaled: its stages' iterations are the shares. Planned for 90 % of
# the time left: start-up, the final validation and the save come on top (two runs side by
# side overran a full plan by about 8 % in the second 2026-12-04 lease, and one was cut off)
share = {st["name"]: st["iterations"] for st in yaml.safe_load(open(config))["train"]["stages"]}
unit = 0.9 * left / sum(share[k] * cost[k] for k in share)
print(" ".join(str(max(10, int(unit * share[k]))) for k in share))
print(json.dumps({"config": config, "seconds_per_iteration": cost, "budget_s": left}),
      file=sys.stderr)
EOF
}
train() {                                   # CONFIG NAME LEFT I1 I2 I3
  local run=$RUNS/$2
  rm -rf "$run"
  timeout $(( $3 > 0 ? $3 + 30 : 60 )) $PY -m streamtmr train --config "$1" \
    --data "$DATA" --device "$DEVICE" --out "$run" --set model.preset=$PRESET \
    --set "train.stages[0].iterations=$4" --set "train.stages[1].iterations=$5" \
    --set "train.stages[2].iterations=$6" --set train.val_every=100000 \
    >"$OUT/train-$2.log" 2>&1
  log "training $2 exit $?: $(tail -n 1 "$OUT/train-$2.log")"
}
pack() {                                    # NAME: the run and its logs into $OUT/NAME.tar.gz
  local run=$RUNS/$1 files=() f
  for f in model.safetensors config.yaml metrics.jsonl; do
    [ -f "$run/$f" ] && files+=("$run/$f")
  done
  # an unfinished run brings back its last weights (not the optimiser: resuming needs the GPU)
  [ -f "$run/model.safetensors" ] || files+=($(ls "$run"/checkpoints/last*.json \
    "$run"/checkpoints/last.safetensors 2>/dev/null))
  # the logs travel inside the tarball: a lease brings back at most 8 files of 16 MiB each
  mkdir -p "$run"
  for f in synth.log "calibration-$1.log" "train-$1.log"; do
    [ -f "$OUT/$f" ] && cp "$OUT/$f" "$run/lease-$f" && files+=("$run/lease-$f")
  done
  local tar="$OUT/$1.tar.gz"
  [ ${#files[@]} -gt 0 ] && tar czf "$tar" "${files[@]}"
  # the paper preset's weights (5.6M float32) pass that limit: parts of 15 MiB, joined with
  # cat NAME.tar.gz.* > NAME.tar.gz
  if [ -f "$tar" ] && [ "$(stat -c %s "$tar")" -gt $(( 15 << 20 )) ]; then
    split -b 15M -d "$tar" "$tar." && rm "$tar"
  fi
}
name() { basename "$1" .yaml; }             # the run, and the tarball that brings it back
log "calibration: $CAL iterations per stage: $CONFIGS"
for c in $CONFIGS; do calibrate "$c" "$(name "$c")" & done
wait
LEFT=$(( TOTAL - $(el) - ${MARGIN_S:-60} ))
for c in $CONFIGS; do
  n=$(name "$c")
  if ITERS=$(iterations "$LEFT" "$c" "$n"); then
    log "training $n: $ITERS iterations in about $LEFT s"
    # shellcheck disable=SC2086
    train "$c" "$n" "$LEFT" $ITERS &
  else
    log "calibration failed: $n"; tail -n 30 "$OUT/calibration-$n.log" | tee -a "$OUT/log.txt"
  fi
done
wait
for c in $CONFIGS; do pack "$(name "$c")"; done
rm -f "$OUT"/synth.log "$OUT"/calibration-*.log "$OUT"/train-*.log
ls -la "$OUT" "$OUT/bench" | tee -a "$OUT/log.txt"
log "done"

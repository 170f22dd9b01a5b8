#!/usr/bin/env bash
# The GPU target table of the speed issue in one command: about 8 minutes on one H200.
#
#   bash scripts/bench/gpu_suite.sh OUT_DIR [--original PATH/TO/original/hornet.py] [--smoke] [--check]
#
# --check: only step 0 (imports, model names, gf_impl choices, lever flags, triton, no tensorboardX needed), then
# exit 0 or 1.
#
# Runs, all bf16 autocast, channels_last, batch 128, 224 px, torch's fused AdamW (scripts/benchmark.py; every
# training step = forward, backward, optimizer step; ratios paired within a run):
#   1. eager: HorNet-T 7x7, HorNet-T GF with every gf_impl this checkout has (the kron lever against fft), timm
#      ConvNeXt-T, and the original release's HorNet-T 7x7 and GF (when --original / ORIG_HORNET is given),
#      training and inference, peak memory; then the profile of one training step per case (top kernels by CUDA
#      time, kernel launches per step);
#   1b. the opt-in levers on HorNet-T 7x7, each against the default path in the same process: fused gating, the
#      Triton depthwise conv (skipped with a note where triton cannot run) and both; training, inference, profile;
#   2. HorNet-L at batch 32 with no / full / selective checkpointing, ConvNeXt-L with none / full (one process each);
#   3. the original code in its own setting (fp16, NCHW) against ours in the same setting (needs the original);
#   4. torch.compile (default mode): HorNet-T 7x7 against ConvNeXt-T, training and inference;
#   5. if time is left: mode reduce-overhead (CUDA graphs), then torch.compile of HorNet-T GF (each gf_impl);
#   6. the roofline bound (scripts/bench/roofline.py, CPU only, run beside step 4) with this run's eager numbers;
#   7. scripts/bench/gpu_report.py: OUT_DIR/summary.md (the tables, each lever's ratio to the default path, the
#      targets) and summary.json.
# Every step has a time limit (benchmark.py --time_limit, then `timeout`); a step that runs out keeps what it
# measured. OUT_DIR also gets each run's JSON and markdown, env.txt and suite.log (all output), about 19 files:
# pack it (tar czf suite.tgz -C OUT_DIR .) where only a few files can be copied back.
#
# Environment:
#   ORIG_HORNET  the original release's hornet.py (as --original). Absent: its rows are skipped, with a note.
#   PY           python to use (default python3). The repository goes on PYTHONPATH (no install needed).
#   WHEELS       folder of wheels to install first (pip --target /tmp/site, then PYTHONPATH); default .whl when it
#                holds any. The lent H200 has torch 2.11 and its own timm; nothing here needs tensorboardX.
#   BUDGET_S     seconds for the whole run (default 470).
#   EXTRA_EAGER  extra benchmark.py arguments for step 1 (a lever's flag, say).
#   SUITE_COMMIT the commit to record (default: git rev-parse HEAD; the lent machine gets no .git).
#   DRY_RUN=1    print each step's command and time limit without running anything, as if every step used its
#                whole limit (the worst case): checks that the budget holds.
#   SMOKE=1      as --smoke: the same steps on the CPU at tiny sizes (batch 1, 64 px, hornet_micro_7x7 and
#                convnext_atto for every model, the compile path through torch.compile's 'eager' backend, the
#                Triton lever under TRITON_INTERPRET=1, training only), to catch argument and import errors before
#                a GPU run; 4-6 minutes on a 2-core machine.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # scripts.bench, models, errors: importable without an install

OUT=""; SMOKE=${SMOKE:-0}; ORIG=${ORIG_HORNET:-}; DRY=${DRY_RUN:-0}; CHECK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --check) CHECK=1 ;;
    --original) ORIG=${2:-}; shift ;;
    --original=*) ORIG=${1#*=} ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) OUT=$1 ;;
  esac
  shift
done
if [ -z "$OUT" ]; then
  echo "usage: bash scripts/bench/gpu_suite.sh OUT_DIR [--original hornet.py] [--smoke]" >&2; exit 2
fi
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/suite.log") 2>&1
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
BUDGET=${BUDGET_S:-470}
: > "$OUT/notes.txt"
note() { echo "NOTE: $*"; echo "$*" >> "$OUT/notes.txt"; }
step() { echo; echo "=== [${SECONDS}s of ${BUDGET}s] $*"; }
# limit CAP RESERVE: seconds for the next step: CAP, or what is left of the budget minus RESERVE (for the steps
# after it), whichever is smaller
limit() { local l=$(( BUDGET - SECONDS - $2 )); [ "$l" -gt "$1" ] && l=$1; echo "$l"; }

if [ "$SMOKE" = 1 ]; then
  DEV=cpu; BS=1; RES=64; R=1; IT=1; WU=1; PROF=8; MR=1; MI=1; CR=1
  T7=hornet_micro_7x7; TGF=""; CNX=convnext_atto; HL=hornet_micro_7x7; CL=convnext_atto; MB=1
  CB=(--compile_backend eager); RL_MODELS="hornet_micro_7x7 convnext_atto"
  # the interpreted Triton kernel takes ~20 s per training step here: train only, no warm-up, no profile
  LEVER_CAP=240; LEVER_ARGS=(--what train --warmup 0 --profile 0)
else
  DEV=cuda; BS=128; RES=224; R=5; IT=3; WU=2; PROF=30; MR=3; MI=2; CR=3
  T7=hornet_tiny_7x7; TGF=hornet_tiny_gf; CNX=convnext_tiny; HL=hornet_large_7x7; CL=convnext_large; MB=32
  CB=(); RL_MODELS="hornet_tiny_7x7 hornet_tiny_gf convnext_tiny"
  LEVER_CAP=75; LEVER_ARGS=(--warmup "$WU" --profile "$PROF")
fi

step "0 environment"
if [ "$DRY" = 1 ]; then
  GFI="fft matmul kron"; TRITON=ok; rc=0
  echo "dry run: nothing is executed; every step is assumed to use its whole time limit"
elif [ "$DEV" = cuda ]; then
  WHEELS=${WHEELS:-.whl}
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$WHEELS"/*.whl \
      && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || note "installing the wheels in $WHEELS failed"
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/env.txt" 2>&1
fi
# imports, model names, the gf_impl choices and lever flags benchmark.py accepts, and whether triton can run (stdout
# line 1: the gf_impls; line 2: "ok" or why not); benchmark.py and roofline.py must not need tensorboardX (the lent
# GPU machine has none)
check_env() {
  $PY - "$DEV" "$T7" "$TGF" "$CNX" "$HL" "$CL" <<'EOF' 2>>"$OUT/env.txt"
import sys
import torch, timm
from scripts.bench import cli, common, roofline  # noqa: F401
assert 'tensorboardX' not in sys.modules, 'benchmark.py/roofline.py import tensorboardX'
common.check_models([m for m in sys.argv[2:] if m], None)
import models
impls = []
for impl in models.GF_IMPLS:
    try:
        cli.parse_args(['--gf_impl', impl])
        impls.append(impl)
    except SystemExit:
        print(f'gf_impl {impl}: models has it, benchmark.py --gf_impl does not accept it', file=sys.stderr)
cli.parse_args([f'--{lv}=off' for lv in common.LEVERS])  # every lever has its flag
try:
    common.check_triton_dwconv(torch.device(sys.argv[1]))
    triton = 'ok'
except common.UserError as e:
    triton = str(e)
print(f'torch {torch.__version__} cuda {torch.version.cuda} timm {timm.__version__} python {sys.version.split()[0]} '
      f'device {torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}; triton: {triton}',
      file=sys.stderr)
print(' '.join(impls))
print(triton)
EOF
}
if [ "$DRY" != 1 ]; then
  # smoke (CPU): the Triton kernel runs under its interpreter (set before triton is first imported)
  [ "$SMOKE" = 1 ] && export TRITON_INTERPRET=1
  ENV_OUT=$(check_env); rc=$?
  GFI=$(sed -n 1p <<< "$ENV_OUT"); TRITON=$(sed -n 2p <<< "$ENV_OUT")
fi
touch "$OUT/env.txt"; cat "$OUT/env.txt"
if [ $rc -ne 0 ] || [ -z "$GFI" ]; then echo "error: the environment check failed (see above)"; exit 1; fi
echo "gf_impl choices: $GFI"
echo "triton: $TRITON"
GIT=${SUITE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
cat > "$OUT/suite.json" <<EOF
{"commit": "$GIT", "smoke": $([ "$SMOKE" = 1 ] && echo true || echo false), "device": "$DEV", "batch_size": $BS,
 "input_size": $RES, "repeats": $R, "iters": $IT, "roles": {"t7": "$T7", "tgf": "$TGF", "cnx": "$CNX", "hl": "$HL",
 "cl": "$CL"}, "gf_impls": "$GFI", "original": "$ORIG"}
EOF
if [ "$CHECK" = 1 ]; then echo "environment check passed"; exit 0; fi

ORIG_ARGS=(); ORIG_MODELS=""
if [ -n "$ORIG" ] && { [ -f "$ORIG" ] || [ "$DRY" = 1 ]; }; then
  ORIG_ARGS=(--original "$ORIG"); ORIG_MODELS="orig:hornet_tiny_7x7 orig:hornet_tiny_gf"
  [ "$SMOKE" = 1 ] && ORIG_MODELS="orig:hornet_tiny_7x7"
else
  why=${ORIG:+; $ORIG is not a file}
  note "original code rows skipped: no original hornet.py (give --original PATH or ORIG_HORNET=PATH)$why"
fi
B=($PY scripts/benchmark.py --device "$DEV" --input_size "$RES")

# run_bench NAME CAP RESERVE ARGS...: benchmark.py with --time_limit (stops starting new work) inside `timeout`
run_bench() {
  local name=$1 cap=$2 reserve=$3; shift 3
  local l; l=$(limit "$cap" "$reserve")
  if [ "$l" -lt 30 ]; then note "$name skipped: ${l}s left of the budget"; return 1; fi
  # `timeout` sends SIGTERM at l-15 s (benchmark.py then writes what it has) and SIGKILL 15 s later: at most l s
  local tl=$(( l - 15 - ( (l - 15) / 10 > 5 ? (l - 15) / 10 : 5 ) ))  # a repeat round is seconds long on a GPU
  if [ "$DRY" = 1 ]; then
    echo "[dry run] $name: up to ${l}s (SIGTERM at $(( l - 15 ))s, --time_limit ${tl}s): ${B[*]} $*"
    SECONDS=$(( SECONDS + l )); return 0
  fi
  timeout -k 15 "$(( l - 15 ))" "${B[@]}" "$@" --time_limit "$tl" --json "$OUT/$name.json" --markdown "$OUT/$name.md" \
    2>&1 | grep -v '^\s*$' | tail -60
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && note "$name: stopped by its ${l}s limit"
  [ -f "$OUT/$name.json" ] || note "$name: no JSON written (rc $rc)"
  return 0
}

step "1 eager: HorNet-T 7x7 / GF (gf_impl: $GFI) / ConvNeXt-T ${ORIG_MODELS:+/ original}, train + infer, profile"
# shellcheck disable=SC2086
run_bench eager 150 290 --models $T7 $TGF $CNX $ORIG_MODELS "${ORIG_ARGS[@]}" --baseline "$CNX" \
  --dtype bf16 --channels_last on --gf_impl $GFI --batch_size "$BS" --repeats "$R" --iters "$IT" --warmup "$WU" \
  --profile "$PROF" ${EXTRA_EAGER:-}

step "1b levers on $T7, each against the default path in this process: fused gating, Triton depthwise conv, both"
TRITON_LEVER=(--triton_dwconv off on)
if [ "$TRITON" != ok ]; then TRITON_LEVER=(); note "Triton depthwise conv lever skipped: $TRITON"; fi
run_bench levers "$LEVER_CAP" 230 --models "$T7" --baseline "$T7" --fused_gating off on "${TRITON_LEVER[@]}" \
  --dtype bf16 --channels_last on --batch_size "$BS" --repeats "$R" --iters "$IT" "${LEVER_ARGS[@]}"

step "2 memory at batch $MB: $HL none/full/selective, $CL none/full (one process per model)"
run_bench mem_hornet 70 160 --models "$HL" --grad_checkpointing off on selective --dtype bf16 --batch_size "$MB" \
  --repeats "$MR" --iters "$MI" --warmup 1 --what train
run_bench mem_convnext 45 120 --models "$CL" --grad_checkpointing off on --dtype bf16 --batch_size "$MB" \
  --repeats "$MR" --iters "$MI" --warmup 1 --what train

if [ -n "$ORIG_MODELS" ]; then
  step "3 the original code in its own setting (fp16, NCHW) against ours in the same setting"
  run_bench orig_own 40 80 --models "$T7" orig:hornet_tiny_7x7 "${ORIG_ARGS[@]}" --baseline orig:hornet_tiny_7x7 \
    --dtype fp16 --channels_last off --batch_size "$BS" --repeats "$CR" --iters "$IT" --warmup 1 --what train
fi

step "6 (background) roofline bound on the CPU, while step 4 compiles"
RL_PID=""
if [ "$DRY" != 1 ]; then
  # shellcheck disable=SC2086
  nice -n 10 env OMP_NUM_THREADS=1 $PY scripts/bench/roofline.py --models $RL_MODELS --batch_size "$BS" \
    --input_size "$RES" --dtype bf16 --gpu h200 --json "$OUT/roofline.json" --markdown "$OUT/roofline.md" \
    > "$OUT/roofline.log" 2>&1 &
  RL_PID=$!
fi

step "4 torch.compile (default mode): HorNet-T 7x7 / ConvNeXt-T, train + infer"
run_bench compiled 220 20 --models "$T7" "$CNX" --baseline "$CNX" --compile on "${CB[@]}" --dtype bf16 \
  --channels_last on --batch_size "$BS" --repeats "$CR" --iters "$IT" --warmup 1

step "5 if time is left: compile mode reduce-overhead (CUDA graphs), then compiled GF"
if [ "$DEV" = cuda ] && [ "$(limit 999 20)" -gt 90 ]; then
  run_bench compiled_cudagraphs 120 20 --models "$T7" "$CNX" --baseline "$CNX" --compile on \
    --compile_mode reduce-overhead --dtype bf16 --channels_last on --batch_size "$BS" --repeats "$CR" \
    --iters "$IT" --warmup 2 --what train
else
  note "compile mode reduce-overhead (CUDA graphs) skipped (time, or not on a GPU)"
fi
if [ -n "$TGF" ] && [ "$(limit 999 20)" -gt 90 ]; then
  # shellcheck disable=SC2086
  run_bench compiled_gf 120 20 --models "$T7" "$TGF" --baseline "$T7" --compile on "${CB[@]}" --gf_impl $GFI \
    --dtype bf16 --channels_last on --batch_size "$BS" --repeats "$CR" --iters "$IT" --warmup 1 --what train
else
  note "compiled GF rows skipped (time or no GF model)"
fi

step "6 waiting for the roofline"
w=$(limit 120 10); [ "$w" -lt 5 ] && w=5
if [ "$DRY" = 1 ]; then
  echo "[dry run] roofline: up to ${w}s more"; SECONDS=$(( SECONDS + w ))
else
  for _ in $(seq "$w"); do kill -0 "$RL_PID" 2>/dev/null || break; sleep 1; done
  if kill -0 "$RL_PID" 2>/dev/null; then kill "$RL_PID"; note "roofline stopped: out of time"; fi
  wait "$RL_PID" 2>/dev/null || note "roofline failed (see roofline.log)"
  tail -3 "$OUT/roofline.log"
fi

step "7 summary"
if [ "$DRY" = 1 ]; then echo "[dry run] worst case total: ${SECONDS}s + the report"; exit 0; fi
$PY scripts/bench/gpu_report.py "$OUT" || echo "error: the report failed"
echo "=== done in ${SECONDS}s; files in $OUT:"
ls "$OUT"

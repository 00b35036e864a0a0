#!/usr/bin/env bash
# The whole matrix on one machine: the baseline first, then every technique variant against it (--reference),
# then the comparison report. Every option given here goes to every script, e.g.
#
#   scripts/run_all.sh --model tiny-random --tokenizer-dir ../shared/data/biogpt-large \
#       --data-dir ../shared/data/pubmedqa --limit 20 --wandb disabled
#
# Environment: RESULTS (output directory, default results/run_all-DATE), ONLY (regex on run names: run just
# those), SPARSITIES (default "0.3 0.5 0.7"), FINETUNE_STEPS (pruning recovery run, default 20), QAT_STEPS
# (default 10), TVM_TRIALS (default 16), PYTHON (default python).
# A failing command does not stop the matrix: it leaves RUN/error.json {"command","returncode","stderr_tail"}.
# Known-broken combinations (below) are not run: they are printed with the reason and recorded as
# RUN/error.json {"skipped": true, "reason", "command"}. The report lists both. Exit status: 1 if any command
# failed, else 0.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${RESULTS:-results/run_all-$(date +%Y%m%d-%H%M%S)}
ONLY=${ONLY:-}
SPARSITIES=${SPARSITIES:-0.3 0.5 0.7}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's evaluation package, not an installed one
COMMON=("$@")

for a in "$@"; do
  case "$a" in
    --output-dir*|--run-name*|--reference*)
      echo "error: run_all.sh sets ${a%%=*} itself (results go to RESULTS=$OUT)" >&2; exit 2 ;;
  esac
done

# Where the runs will happen: the scripts' own --device, else CUDA when present. fp8 needs compute capability 8.9+.
read -r DEVICE FP8 < <("$PYTHON" - "$@" <<'EOF'
import sys
args, device = sys.argv[1:], "auto"
for i, a in enumerate(args):
    if a == "--device" and i + 1 < len(args):
        device = args[i + 1]
    elif a.startswith("--device="):
        device = a.split("=", 1)[1]
if device == "cpu":
    sys.exit(print("cpu no"))
import torch
cuda = torch.cuda.is_available()
print("cuda" if cuda else "cpu", "yes" if cuda and torch.cuda.get_device_capability() >= (8, 9) else "no")
EOF
)
# The report logs to wandb in the mode the runs used.
REPORT_ARGS=()
for ((i = 1; i <= $#; i++)); do
  case "${!i}" in
    --wandb|--wandb-project) j=$((i + 1)); REPORT_ARGS+=("${!i}" "${!j}") ;;
    --wandb=*|--wandb-project=*) REPORT_ARGS+=("${!i}") ;;
  esac
done

mkdir -p "$OUT"
echo "run_all: results in $OUT, device $DEVICE, common options: ${COMMON[*]}"
FAILED=() SKIPPED=() OK=() REF=()

write_error() {  # DIR RETURNCODE LOG|- REASON|- COMMAND...: RUN/error.json for the report
  "$PYTHON" - "$@" <<'EOF'
import json, pathlib, shlex, sys
run_dir, rc, log, reason, *cmd = sys.argv[1:]
record = {"command": shlex.join(cmd), "returncode": None if rc == "-" else int(rc)}
if log != "-":  # keep the last screen of stderr, progress-bar redraws (\r) collapsed
    lines = [x.split("\r")[-1] for x in pathlib.Path(log).read_text(errors="replace").split("\n")]
    record["stderr_tail"] = "\n".join([x for x in lines if x.strip()][-40:])
if reason != "-":
    record.update(skipped=True, reason=reason)
out = pathlib.Path(run_dir)
out.mkdir(parents=True, exist_ok=True)
(out / "error.json").write_text(json.dumps(record, indent=2) + "\n")
EOF
}

wanted() { [[ -z "$ONLY" || "$1" =~ $ONLY ]]; }

run() {  # NAME SCRIPT FLAGS...: one cell of the matrix
  local name=$1 script=$2; shift 2
  wanted "$name" || return 0
  local cmd=("$PYTHON" "$script" "$@" "${COMMON[@]}" "${REF[@]}" --output-dir "$OUT" --run-name "$name")
  local log rc
  log=$(mktemp)
  rm -rf "${OUT:?}/$name"
  echo; echo "=== $name: ${cmd[*]}"
  { "${cmd[@]}" 2>&1 1>&3 3>&- | tee "$log" >&2; rc=${PIPESTATUS[0]}; } 3>&1
  if [[ $rc -eq 0 ]]; then
    OK+=("$name")
  else
    echo "=== $name FAILED (exit $rc); recorded in $OUT/$name/error.json, continuing"
    write_error "$OUT/$name" "$rc" "$log" - "${cmd[@]}"
    FAILED+=("$name (exit $rc)")
  fi
  rm -f "$log"
  return 0
}

skip() {  # NAME REASON SCRIPT FLAGS...: a known-broken combination, listed instead of run
  local name=$1 reason=$2 script=$3; shift 3
  wanted "$name" || return 0
  echo; echo "=== $name SKIPPED (known broken here): $reason"
  rm -rf "${OUT:?}/$name"
  write_error "$OUT/$name" - - "$reason" "$PYTHON" "$script" "$@" "${COMMON[@]}"
  SKIPPED+=("$name: $reason")
}

# --- baseline: the reference of every other run
run baseline baseline/baseline.py
if [[ -f "$OUT/baseline/results.json" ]]; then
  REF=(--reference "$OUT/baseline")
else
  echo "run_all: no baseline results: the technique runs go on without --reference (no fidelity figures)"
fi

# --- precision reduction
for p in float32 float16 bfloat16 int8 int4 float4 fp8; do
  if [[ $p == fp8 && $FP8 != yes ]]; then
    skip "precision-$p" "fp8 needs a CUDA GPU with compute capability >= 8.9 (Ada/Hopper); this run is on $DEVICE" \
      precision_reduction/precision_experiments.py --precision "$p"
  else
    run "precision-$p" precision_reduction/precision_experiments.py --precision "$p"
  fi
done

# --- pruning
for s in unstructured structured block; do
  for x in $SPARSITIES; do
    run "pruning-$s-$x" pruning/pruning.py --strategy "$s" --sparsity "$x"
  done
done
if [[ $DEVICE == cuda ]]; then  # semi-structured sparse kernels run in fp16/bf16 only
  run pruning-2to4-0.5 pruning/pruning.py --strategy 2:4 --sparsity 0.5 --dtype bfloat16
else
  wanted pruning-2to4-0.5 && echo && echo "=== note: 2:4 on $DEVICE has no sparse kernels: pruned 2:4 and evaluated dense (the run records it)"
  run pruning-2to4-0.5 pruning/pruning.py --strategy 2:4 --sparsity 0.5
fi
run pruning-unstructured-0.5-finetuned pruning/pruning.py --strategy unstructured --sparsity 0.5 \
  --finetune-steps "${FINETUNE_STEPS:-20}"

# --- quantization
for s in dynamic-int8 weight-only-int8 weight-only-int4; do
  if [[ $s == weight-only-int4 && $DEVICE != cuda ]]; then
    skip "quantization-$s" "torchao's int4 weight-only kernels (tinygemm) need CUDA; this run is on $DEVICE" \
      quantization/quant_int8_dynamic_eval.py --scheme "$s"
  else
    run "quantization-$s" quantization/quant_int8_dynamic_eval.py --scheme "$s"
  fi
done
for w in int4 int8; do
  run "qat-$w" quantization/qat.py --weights "$w" --steps "${QAT_STEPS:-10}"
done
run qat-int4-not-converted quantization/qat.py --weights int4 --steps "${QAT_STEPS:-10}" --no-convert

# --- tensor rewriting
for bm in eager:default aot_eager:default inductor:default inductor:reduce-overhead inductor:max-autotune \
          cudagraphs:default tvm:default tvm:ansor; do
  b=${bm%%:*} m=${bm#*:}
  flags=(--backend "$b" --mode "$m")
  [[ $m == ansor ]] && flags+=(--tvm-trials "${TVM_TRIALS:-16}")
  if [[ $b == cudagraphs && $DEVICE != cuda ]]; then
    skip "tensor-$b-$m" "the cudagraphs backend captures CUDA graphs: CUDA only; this run is on $DEVICE" \
      tensor_rewriting/tensor_experiments.py "${flags[@]}"
  else
    run "tensor-$b-$m" tensor_rewriting/tensor_experiments.py "${flags[@]}"
  fi
done

# --- the report
echo; echo "=== report: $PYTHON -m evaluation.report $OUT ${REPORT_ARGS[*]}"
"$PYTHON" -m evaluation.report "$OUT" "${REPORT_ARGS[@]}" || FAILED+=("report (exit $?)")

echo
echo "run_all: ${#OK[@]} run(s) ok, ${#FAILED[@]} failed, ${#SKIPPED[@]} skipped as known broken"
for f in "${FAILED[@]}"; do echo "  failed:  $f"; done
for s in "${SKIPPED[@]}"; do echo "  skipped: $s"; done
echo "report: $OUT/report.md"
[[ ${#FAILED[@]} -eq 0 ]]

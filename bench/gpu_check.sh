#!/usr/bin/env bash
# The GPU path in one prepared run (issue 14): what CI, on machines without a GPU, cannot check.
#
#   bash bench/gpu_check.sh [OUTDIR]             # on a machine with a CUDA GPU: a few minutes
#   bash bench/gpu_check.sh --cpu-only [OUTDIR]  # the CPU fallbacks only (tests/test_gpu_check.py)
#
# With a GPU it prints the date, nvidia-smi and the torch / CUDA / Faiss versions, then runs
#   1. the imports the GPU path needs (torch, midigen's model / memory / train / generate);
#   2. tests/test_cuda.py: CUDA against CPU results for the three variants, the kNN memory's
#      search (on the device, through a wrapped ring and in blocks), bf16-autocast training,
#      generation, and torchrun over NCCL on every visible GPU;
#   3. bench/train.py --device cuda for the three variants (and the two references): the
#      default model (params.yaml) at batch 8 x 256, as bench/RESULTS.md's CPU table, and at a
#      GPU-sized batch 64 x 256; and xl_knn's step time as its kNN memory fills (1k, 8k, 32k,
#      65k keys per row, batch 64; issue 25: within 1.5x of the 1k step at 65k);
#   4. the existing torchrun test (tests/test_train.py, two processes): on two or more GPUs
#      with NCCL; on one GPU with the GPU hidden (gloo), since two processes cannot share one
#      GPU under NCCL.
# Without a GPU (or with --cpu-only, which hides any GPU) it runs 1, 2 (whose tests then skip,
# each saying why) and a one-step CPU throughput run instead of 3, in well under a minute.
# Everything goes to OUTDIR (default bench/out/gpu): gpu_check.log (all of it), summary.md
# (versions, each step's outcome, the tests' verdicts and skip reasons, the throughput tables)
# and one NAME.txt per step. Each step has a time limit, and all of them together at most
# GPU_CHECK_BUDGET_S seconds (default 540); a failed step does not stop the others, but the
# script exits 1. PYTHON (default python3) is the interpreter that has torch and midigen.
set -euo pipefail

cpu_only=0
out=""
for arg in "$@"; do
    case "$arg" in
    --cpu-only) cpu_only=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    -*)
        echo "gpu_check.sh: unknown option $arg (see --help)" >&2
        exit 2
        ;;
    *) out="$arg" ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
budget="${GPU_CHECK_BUDGET_S:-540}"
out="${out:-bench/out/gpu}"
mkdir -p "$out"
: >"$out/gpu_check.log"
exec > >(tee -a "$out/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1

if [ "$cpu_only" = 1 ]; then
    export CUDA_VISIBLE_DEVICES="" # torch then sees no GPU: the CPU fallbacks, everywhere
fi
gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$gpus" = 0 ] && [ "$cpu_only" = 0 ]; then
    echo "torch sees no CUDA GPU: running the CPU fallbacks only (as --cpu-only)"
    cpu_only=1
fi
mode=$([ "$cpu_only" = 1 ] && echo "CPU-only (no GPU used)" || echo "GPU ($gpus visible)")

summary="$out/summary.md"
steps=()
failed=()
start_all=$SECONDS

# step NAME LIMIT_S COMMAND...: run COMMAND under a time limit (cut to what is left of the
# budget), its output on the console and in OUTDIR/NAME.txt; record how it went.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((budget - (SECONDS - start_all)))
    if [ "$left" -lt 20 ]; then
        echo "=== $name: not run, the ${budget} s budget is spent"
        steps+=("| $name | not run (time budget spent) | 0 s |")
        failed+=("$name")
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo
    echo "=== $name (limit ${limit} s): $*"
    local began=$SECONDS rc=0
    { timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.txt"; } || rc=$?
    local took=$((SECONDS - began)) verdict=ok
    if [ "$rc" != 0 ]; then
        verdict="FAILED (exit $rc$([ "$rc" = 124 ] && echo ", timed out"))"
        failed+=("$name")
    fi
    echo "--- $name: $verdict, ${took} s"
    steps+=("| $name | $verdict | ${took} s |")
}

echo "# GPU check (bench/gpu_check.sh): $mode"
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "commit: ${GPU_CHECK_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
echo "host: $(uname -srm), $(nproc) cores"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi || echo "nvidia-smi failed"
    gpu_line=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader |
        head -1) || gpu_line="unknown"
else
    echo "nvidia-smi: not found"
    gpu_line="none (no nvidia-smi)"
fi
versions=$("$PYTHON" - <<'EOF'
import platform, torch
cuda = torch.cuda.is_available()
names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuda available {cuda}, devices {names}, bf16 {cuda and torch.cuda.is_bf16_supported()}, "
      f"NCCL {'.'.join(map(str, torch.cuda.nccl.version())) if cuda else '-'}")
EOF
)
echo "$versions"

step imports 120 "$PYTHON" -c "
import torch
import midigen.generation.sampling, midigen.models.memory, midigen.models.transformer, midigen.models.training
print('imports ok: torch', torch.__version__, '| midigen', midigen.__file__)
"
step test_cuda 300 "$PYTHON" -m pytest -v -rs -p no:cacheprovider tests/test_cuda.py

if [ "$cpu_only" = 1 ]; then
    step train_cpu_smoke 90 "$PYTHON" bench/train.py --device cpu --batch 1 --segment 32 \
        --warmup 1 --steps 1 --repeats 1
    echo "(the existing torchrun test, tests/test_train.py, is left to CI on the CPU)"
else
    step train_b8 150 "$PYTHON" bench/train.py --device cuda --batch 8
    step train_b64 150 "$PYTHON" bench/train.py --device cuda --batch 64
    step train_fill 150 "$PYTHON" bench/train.py --device cuda --batch 64 --steps 4 --repeats 2 \
        --fill 1024 8192 32768 65536
    ddp=tests/test_train.py::test_torchrun_two_processes_match_one_process
    if [ "$gpus" -ge 2 ]; then
        step test_ddp 240 "$PYTHON" -m pytest -v -rs -p no:cacheprovider "$ddp"
    else
        echo "one GPU: the two-process torchrun test runs with the GPU hidden (gloo on the CPU)"
        step test_ddp 240 env CUDA_VISIBLE_DEVICES= "$PYTHON" -m pytest -v -rs \
            -p no:cacheprovider "$ddp"
    fi
fi

{
    echo "# GPU check (bench/gpu_check.sh): $mode"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- commit: ${GPU_CHECK_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
    echo "- GPU (name, driver, memory): $gpu_line"
    echo "$versions" | sed 's/^/- /'
    echo "- total: $((SECONDS - start_all)) s"
    echo
    echo "| step | outcome | time |"
    echo "|---|---|---:|"
    printf '%s\n' "${steps[@]}"
    for name in test_cuda test_ddp; do
        [ -f "$out/$name.txt" ] || continue
        echo
        echo "## $name"
        echo
        echo '```'
        grep -E '(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)|^=+ .*(passed|failed|skipped|error).* =+$' \
            "$out/$name.txt" || true
        echo '```'
    done
    for name in train_b8 train_b64 train_fill train_cpu_smoke; do
        [ -f "$out/$name.txt" ] || continue
        echo
        echo "## $name"
        echo
        grep -E '^(model:.*|\|.*|- .*|)$' "$out/$name.txt" || true
    done
} >"$summary"
echo
echo "=== summary ($summary)"
cat "$summary"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "gpu_check: FAILED steps: ${failed[*]}"
    exit 1
fi
echo "gpu_check: all steps ok"

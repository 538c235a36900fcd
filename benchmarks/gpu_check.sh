#!/usr/bin/env bash
# htsr's CUDA path on a GPU machine, in at most 8 minutes (`make gpu-check`); what each step
# does is in benchmarks/gpu_check.py. No installation: the machine's Python (torch,
# transformers, safetensors, typer, rich) runs the source tree from PYTHONPATH.
#
#   bash benchmarks/gpu_check.sh                  # results in $OUT (default ./gpu-check-out)
#   bash benchmarks/gpu_check.sh --device cpu     # the dry run, anywhere
#   GPU_CHECK_BUDGET_S=300 PYTHON=python3.12 bash benchmarks/gpu_check.sh --steps profile,agreement
#
# The driver stops starting commands when its budget is spent and kills the one running at
# the limit; `timeout` (when the machine has it) ends the whole run 30 s after that anyway.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-$(command -v python3 || command -v python)}
budget=${GPU_CHECK_BUDGET_S:-480}
out=${OUT:-gpu-check-out}

bound=()
if command -v timeout >/dev/null 2>&1; then
    bound=(timeout --kill-after=10 "$((budget + 30))")
fi
exec "${bound[@]}" "$python" "$here/gpu_check.py" --out "$out" --budget-s "$budget" "$@"

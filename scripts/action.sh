#!/usr/bin/env bash
# The shell steps of the composite GitHub Action (action.yml), kept here so that
# they can be run and tested outside GitHub (scripts/run-action-locally.sh).
#
#   action.sh install   # pinned CPU torch (unless already there), then htsr from ACTION_PATH
#   action.sh gate      # htsr gate with the action's inputs; annotations, step summary, JUnit file
#
# Inputs come as environment variables, as GitHub passes them to the steps:
#   INPUT_CHECKPOINT (required), INPUT_BASELINE, INPUT_CONFIG, INPUT_ARGS, INPUT_JUNIT,
#   INPUT_TORCH_VERSION, ACTION_PATH (the htsr checkout to install), HTSR_PYTHON (default python).
# Inputs are never pasted into the script text (no script injection through a
# workflow's `with:` values); INPUT_ARGS is split on whitespace, like a command line.
set -euo pipefail

python_bin="${HTSR_PYTHON:-python}"

install() {
  local torch="${INPUT_TORCH_VERSION:-2.13.0}"
  # The default torch wheel on Linux pulls several GB of CUDA libraries: install the
  # CPU build of the pinned version first, so the project's torch requirement is met.
  if ! "$python_bin" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != sys.argv[1])" "$torch" 2>/dev/null; then
    "$python_bin" -m pip install "torch==${torch}" --index-url https://download.pytorch.org/whl/cpu
  fi
  "$python_bin" -m pip install "${ACTION_PATH:?ACTION_PATH is the htsr checkout to install}"
  htsr --version
}

gate() {
  : "${INPUT_CHECKPOINT:?the checkpoint input is required}"
  local junit="${INPUT_JUNIT:-htsr-junit.xml}"
  local args=("$INPUT_CHECKPOINT" --format github --junit "$junit")
  if [ -n "${INPUT_BASELINE:-}" ]; then args+=(--baseline "$INPUT_BASELINE"); fi
  if [ -n "${INPUT_CONFIG:-}" ]; then args+=(--config "$INPUT_CONFIG"); fi
  local extra=()
  if [ -n "${INPUT_ARGS:-}" ]; then read -r -a extra <<< "$INPUT_ARGS"; fi
  # htsr appends its markdown summary to $GITHUB_STEP_SUMMARY itself; exit 1 fails the step.
  htsr gate "${args[@]}" "${extra[@]}"
}

case "${1:-}" in
  install) install ;;
  gate) gate ;;
  *) echo "usage: $0 install|gate" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Run the GitHub Action's shell steps here, with the same inputs as the workflow's `with:`.
#
#   scripts/run-action-locally.sh CHECKPOINT [BASELINE] [CONFIG] [ARGS]
#   SKIP_INSTALL=1 scripts/run-action-locally.sh model.safetensors reports/baseline.json "" "--alpha-max 5"
#
# The step summary goes to a temporary file (GitHub's $GITHUB_STEP_SUMMARY) that is
# printed at the end; the JUnit file is left where the upload step would find it.
# The exit code is the gate's: 0 pass, 1 a rule violated, 2 usage or input error.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
export ACTION_PATH="${ACTION_PATH:-$(dirname "$here")}"
export INPUT_CHECKPOINT="${1:?usage: $0 CHECKPOINT [BASELINE] [CONFIG] [ARGS]}"
export INPUT_BASELINE="${2:-}"
export INPUT_CONFIG="${3:-}"
export INPUT_ARGS="${4:-}"
export INPUT_JUNIT="${INPUT_JUNIT:-htsr-junit.xml}"
export GITHUB_STEP_SUMMARY="${GITHUB_STEP_SUMMARY:-$(mktemp)}"

if [ -z "${SKIP_INSTALL:-}" ]; then
  bash "$here/action.sh" install || exit 2
fi
bash "$here/action.sh" gate
status=$?
echo "--- step summary ($GITHUB_STEP_SUMMARY) ---"
cat "$GITHUB_STEP_SUMMARY"
echo "--- JUnit file for the upload step: $INPUT_JUNIT ---"
exit "$status"

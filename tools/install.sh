#!/usr/bin/env bash
# Create (or complete) the project virtualenv `.venv` with the pinned OpenMMLab stack and mmws.
#
# Idempotent: every step checks whether its package is already importable at the pinned version
# and skips itself, so a second run with everything present takes seconds.
#
# mmcv's ops are built for the CPU, and also for CUDA when torch is a CUDA build and nvcc (from
# $CUDA_HOME, else PATH, else /usr/local/cuda) is present. An installed mmcv whose ops work is
# kept; one without CUDA ops is rebuilt where they can be built.
#
# Usage: tools/install.sh [--plan]     --plan: print the mmcv decision and its inputs, change nothing
#
# Environment:
#   PYTHON     interpreter used to create the venv (default: python3.11, else python3)
#   VENV       venv location (default: .venv at the repo root)
#   MMWS_EXTRAS  pip extras of mmws to install (default: test)
#   MAX_JOBS   parallel compile jobs for mmcv (default: the number of cores)
#   TORCH_CUDA_ARCH_LIST  GPU architectures of the CUDA build (torch's default: the visible GPUs)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$repo_root/.venv}"
MMWS_EXTRAS="${MMWS_EXTRAS:-test}"

TORCH_VERSION=2.13.0
MMCV_VERSION=2.1.0
MMENGINE_VERSION=0.10.7
MMDET_VERSION=3.3.0
MMSEG_VERSION=1.2.2

py="$VENV/bin/python"

log() { printf '[mmws install] %s\n' "$*"; }
die() { log "error: $*" >&2; exit 1; }
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

# The CUDA version torch was built with ("12.1"), or nothing for a CPU build.
torch_cuda_version() {
    "$py" -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null || true
}

# The nvcc torch's extension builder would use: $CUDA_HOME (or $CUDA_PATH), else PATH, else
# /usr/local/cuda. Prints its path, or nothing.
find_nvcc() {
    local home="${CUDA_HOME:-${CUDA_PATH:-}}"
    if [[ -n "$home" ]]; then
        [[ -x "$home/bin/nvcc" ]] && echo "$home/bin/nvcc"
        return 0
    fi
    command -v nvcc || { [[ -x /usr/local/cuda/bin/nvcc ]] && echo /usr/local/cuda/bin/nvcc; } \
        || true
}

# The release of an nvcc ("12.1"), or nothing.
nvcc_release() {
    [[ -n "$1" ]] && "$1" --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9.]*\),.*/\1/p'
    return 0
}

# mmcv's compiled ops: "cuda" (built with CUDA), "cpu", or "none" (missing or not importable).
mmcv_ops() {
    "$py" - <<'EOF' 2>/dev/null || echo none
from mmcv import _ext
print('cpu' if _ext.get_compiling_cuda_version() == 'not available' else 'cuda')
EOF
}

# What to do with mmcv. Arguments: the installed mmcv version (or ""), its ops (cuda|cpu|none),
# torch's CUDA version (or ""), nvcc's release (or ""). Prints one of
#   keep           the installed mmcv has working ops for this machine
#   build-cpu      build the ops for the CPU (a CPU torch, or no nvcc)
#   build-cuda     build them with CUDA (FORCE_CUDA=1)
#   cuda-mismatch  torch and nvcc have different CUDA major versions: no CUDA build possible
mmcv_plan() {
    local installed="$1" ops="$2" torch_cuda="$3" nvcc="$4" target=cpu
    [[ -n "$torch_cuda" && -n "$nvcc" ]] && target=cuda
    if [[ "$installed" == "$MMCV_VERSION" && "$ops" != none ]] \
        && [[ "$target" == cpu || "$ops" == cuda ]]; then
        echo keep
    elif [[ "$target" == cuda && "${torch_cuda%%.*}" != "${nvcc%%.*}" ]]; then
        echo cuda-mismatch
    else
        echo "build-$target"
    fi
}

build_mmcv() {  # build-cpu | build-cuda
    local flags=(--no-build-isolation)
    local env=(MMCV_WITH_OPS=1 "MAX_JOBS=${MAX_JOBS:-$(nproc)}")
    if [[ "$1" == build-cuda ]]; then
        env+=(FORCE_CUDA=1)
        # pip's wheel cache may hold a CPU-only build of the same version.
        flags+=(--no-cache-dir)
        log "building mmcv==$MMCV_VERSION with CPU and CUDA ops (nvcc $nvcc, torch CUDA" \
            "$torch_cuda; typically 20-40 minutes, depending on cores and TORCH_CUDA_ARCH_LIST)"
    else
        log "building mmcv==$MMCV_VERSION with ops (about 11 minutes on 2 cores; pip caches the wheel)"
    fi
    if [[ -n "$installed" ]]; then  # replace it, not "Requirement already satisfied"
        flags+=(--force-reinstall --no-deps --no-cache-dir)
    fi
    env "${env[@]}" "$py" -m pip --disable-pip-version-check install "${flags[@]}" \
        "mmcv==$MMCV_VERSION"
}

# Gathers the inputs of mmcv_plan into globals and prints them (--plan).
gather_mmcv_facts() {
    installed="$(installed_version mmcv)"
    ops="$(mmcv_ops)"
    torch_cuda="$(torch_cuda_version)"
    nvcc_path="$(find_nvcc)"
    nvcc="$(nvcc_release "$nvcc_path")"
    plan="$(mmcv_plan "$installed" "$ops" "$torch_cuda" "$nvcc")"
}

# Fails loudly if the compiled ops are missing (mmdet.models / mmseg.models need them), on the
# CPU and, where torch sees a GPU, on CUDA.
check_install() {
    "$py" - <<'EOF'
import sys

import torch
from mmcv.ops import RoIAlign, nms
import mmdet, mmseg, mmengine, mmcv, mmws, mmws_toy

devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
for device in devices:
    try:
        boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]], device=device)
        _, keep = nms(boxes, torch.tensor([0.9, 0.8], device=device), iou_threshold=0.5)
        assert keep.tolist() == [0], keep
        feats = torch.ones(1, 1, 4, 4, device=device)
        out = RoIAlign((2, 2), 1.0)(feats, torch.tensor([[0., 0., 0., 3., 3.]], device=device))
        assert out.shape == (1, 1, 2, 2) and out.device.type == device, out
    except Exception as error:
        hint = (' (mmcv was built without CUDA ops: install a CUDA toolkit whose nvcc matches '
                f'torch CUDA {torch.version.cuda} and rerun tools/install.sh)'
                if device == 'cuda' else '')
        sys.exit(f'[mmws install] error: mmcv ops fail on {device}: {error!r}{hint}')
print(f'[mmws install] ok: torch {torch.__version__}, mmcv {mmcv.__version__} '
      f'(ops: {", ".join(devices)}), mmengine {mmengine.__version__}, '
      f'mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, mmws {mmws.__version__}')
EOF
}

main() {
    cd "$repo_root"
    if [[ "${1:-}" == --plan ]]; then
        [[ -x "$py" ]] || die "--plan needs the venv $VENV (with torch)"
        gather_mmcv_facts
        printf 'mmcv %s (ops: %s), torch CUDA %s, nvcc %s %s -> %s\n' "${installed:-none}" \
            "$ops" "${torch_cuda:-none}" "${nvcc:-none}" "${nvcc_path:+($nvcc_path)}" "$plan"
        return 0
    fi

    if [[ ! -x "$py" ]]; then
        local python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
        log "creating virtualenv $VENV with $python"
        "$python" -m venv "$VENV"
    fi

    # torch: keep any 2.x a user already has (e.g. a CUDA build); otherwise the pinned release.
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
    gather_mmcv_facts
    case "$plan" in
        keep) ;;
        cuda-mismatch)
            die "torch is built with CUDA $torch_cuda but $nvcc_path is CUDA $nvcc: mmcv's CUDA" \
                "ops need a toolkit of the same major version (set CUDA_HOME to one)" ;;
        *) build_mmcv "$plan" ;;
    esac

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
    # The toy lab (projects/toy): its own package, so configs reach it through custom_imports
    # from any tool and working directory; not part of the mmws wheel.
    if [[ -z "$(installed_version mmws-toy)" ]]; then
        log "installing the toy project (projects/toy, editable)"
        pip install --no-build-isolation --no-deps -e projects/toy
    fi

    check_install
}

# Sourcing the script (the tests do) defines the functions without installing anything.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi

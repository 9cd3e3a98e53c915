#!/usr/bin/env bash
# Installs the CUDA compiler marc's kernel checks need, from NVIDIA's PyPI wheels, into
# target/cuda-tools/ (ignored by git). No GPU or driver is needed: NVRTC (libnvrtc, with ptxas
# inside) compiles for sm_90a and sm_100a on any x86-64 Linux machine, and the runtime wheel brings
# the device headers (cuda_bf16.h, cuda_fp8.h). NVRTC is also what the server compiles the kernels
# with at start-up, so the check compiles exactly as production does. The nvcc wheel is not needed
# (and since CUDA 13 it ships without cicc, so it could not compile on its own anyway).
#
# Idempotent: a stamp file records the pinned versions; when it matches, the script only prints the
# tool folder (well under a second). Prints the folder holding bin/ and include/ on its last line.
#
#   bash scripts/cuda_tools.sh            # install if needed, print the folder
#   CUDA_TOOLS_DIR=/elsewhere bash ...    # install somewhere else
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: one CUDA release for both, so the headers match the compiler. 13.4 matches cudarc's
# `cuda-13040` feature.
CUDA_WHEEL_VERSION=13.4.92
PACKAGES=(
    "nvidia-cuda-nvrtc==${CUDA_WHEEL_VERSION}"
    "nvidia-cuda-runtime==${CUDA_WHEEL_VERSION}"
)

dest="${CUDA_TOOLS_DIR:-$PWD/target/cuda-tools}"
stamp="$dest/.installed"
want="${PACKAGES[*]}"

# The wheels put everything under nvidia/cu13/ (include/, lib/libnvrtc.so.13).
root="$dest/nvidia/cu13"
installed() {
    [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -f "$root/lib/libnvrtc.so.13" && -f "$root/include/cuda_bf16.h" ]]
}
if installed; then
    echo "$root"
    exit 0
fi

# One installer at a time (parallel test processes may all ask); the winner's stamp satisfies the rest.
mkdir -p "$(dirname "$dest")"
exec 9>"$dest.lock"
flock 9
if installed; then
    echo "$root"
    exit 0
fi

python="${PYTHON:-python3}"
if ! "$python" -m pip --version >/dev/null 2>&1; then
    echo "cuda_tools.sh: '$python -m pip' is not available; install Python 3 with pip" >&2
    exit 1
fi
rm -rf "$dest"
mkdir -p "$dest"
echo "cuda_tools.sh: installing ${want} into $dest" >&2
"$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$dest" "${PACKAGES[@]}" >&2
if [[ ! -f "$root/lib/libnvrtc.so.13" || ! -f "$root/include/cuda_bf16.h" ]]; then
    echo "cuda_tools.sh: installed, but $root lacks lib/libnvrtc.so.13 or include/cuda_bf16.h; did the wheels' layout change?" >&2
    exit 1
fi
echo "$want" >"$stamp"
echo "$root"

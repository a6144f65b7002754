#!/usr/bin/env bash
# Fetch (here, with network) the wheels benchmarks/gpu_check.sh installs offline on a GPU
# machine that has torch, transformers, accelerate, peft, safetensors, numpy, Pillow, opencv,
# pluggy, pytest and scikit-image but not diffusers, pydantic, fastapi or uvicorn.
#
#   bash benchmarks/gpu_wheels.sh [DEST]     # default benchmarks/gpu-wheels (git-ignored)
#
# Versions are those verified here (the project's venv); the resolver runs against the GPU
# machine's transformers (CTRLGEN_GPU_TRANSFORMERS, default 5.17.0) so the huggingface_hub and
# safetensors it picks suit both. Wheels are fetched for Python 3.12 (the GPU machine) and for
# the local Python (gpu_check.sh --cpu-smoke here). Fails if the folder passes 60 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-benchmarks/gpu-wheels}"
python="${PYTHON:-.venv/bin/python}"
transformers="${CTRLGEN_GPU_TRANSFORMERS:-5.17.0}"
mkdir -p "$dest"
version() { "$python" -c "import importlib.metadata as m; print(m.version('$1'))"; }
packages=(
    "diffusers==$(version diffusers)" "pydantic==$(version pydantic)" "fastapi==$(version fastapi)"
    "uvicorn==$(version uvicorn)" "httptools==$(version httptools)" "pluggy>=1.5" "setuptools>=77" wheel
    "transformers==$transformers"
)
local_py="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
for py in 3.12 "$local_py"; do
    abi="cp${py/./}"
    "$python" -m pip download -q --disable-pip-version-check --dest "$dest" --only-binary=:all: \
        --python-version "$py" --implementation cp --abi "$abi" --abi abi3 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 --platform any "${packages[@]}" 2>&1 | grep -v "is ignored: it is neither" || true
done
# What the GPU machine already has (and the big ones) does not travel.
rm -f "$dest"/transformers-*.whl "$dest"/tokenizers-*.whl "$dest"/numpy-*.whl
for wanted in diffusers pydantic_core fastapi uvicorn httptools; do
    ls "$dest"/"$wanted"-*.whl >/dev/null 2>&1 || { echo "gpu_wheels: no $wanted wheel in $dest" >&2; exit 1; }
done
size_mb=$(du -sm "$dest" | cut -f1)
echo "gpu_wheels: $(ls "$dest" | wc -l) wheels, ${size_mb} MB in $dest"
if ((size_mb > 60)); then
    echo "gpu_wheels: $dest is ${size_mb} MB, above the 60 MB that may travel with the checkout" >&2
    exit 1
fi

#!/usr/bin/env bash
# The GPU check: one short run on a machine with one NVIDIA GPU and no network at all.
#
#   bash benchmarks/gpu_check.sh [--cpu-smoke] [--out DIR] [--wheels DIR] [--budget-s S]
#
# That machine's Python has torch, transformers, accelerate, peft, safetensors, onnxruntime,
# opencv, pluggy, pytest and scikit-image, but not diffusers, pydantic, fastapi or uvicorn:
# those come offline from the wheel folder (benchmarks/gpu_wheels.sh fetches it beforehand,
# about 40 MB; it travels with the checkout). Steps, each time-boxed so the whole stays under
# 8 minutes:
#   1. a virtual environment over the machine's packages (--system-site-packages), the wheels
#      installed with --no-index (the machine's torch/transformers/accelerate/peft/numpy pinned
#      as they are), ctrlgen itself installed editable without dependencies;
#   2. the `gpu`-marked tests;
#   3. benchmarks/gpu_bench.py (ctrlgen vs bare diffusers at the real shapes, peak memory,
#      memory plans under a cap, speed options), written to OUT/gpu-<device>.json.
# --cpu-smoke runs the same steps here, on the CPU with the tiny models, in a venv that sees
# this checkout's .venv minus diffusers, pydantic, fastapi, starlette, uvicorn and httptools
# (so the offline install is really exercised); the tests run it (tests/benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=0
out="${OUT:-benchmarks/results}"
wheels=benchmarks/gpu-wheels
budget=300
while (($#)); do
    case "$1" in
        --cpu-smoke) smoke=1 ;;
        --out) out="$2"; shift ;;
        --wheels) wheels="$2"; shift ;;
        --budget-s) budget="$2"; shift ;;
        *) echo "usage: bash benchmarks/gpu_check.sh [--cpu-smoke] [--out DIR] [--wheels DIR] [--budget-s S]" >&2; exit 2 ;;
    esac
    shift
done
began=$SECONDS
step() { echo "== gpu_check [$((SECONDS - began)) s] $*"; }
if [[ ! -d "$wheels" ]] || ! ls "$wheels"/diffusers-*.whl >/dev/null 2>&1; then
    echo "gpu_check: no wheels in $wheels; run 'bash benchmarks/gpu_wheels.sh' where there is network, and carry $wheels along" >&2
    exit 2
fi
mkdir -p "$out"
work="${CTRLGEN_GPU_WORK:-$(mktemp -d -t ctrlgen-gpu-XXXXXX)}"
mkdir -p "$work"
export CTRLGEN_CACHE_DIR="$work/cache"  # the tokenizer and tiny models are built here
venv="$work/venv"

step "1. offline install into $venv"
if ((smoke)); then
    python="$(.venv/bin/python -c 'import sys; print(sys._base_executable)')"
    "$python" -m venv "$venv"
    # The machine's packages: this checkout's .venv without what the GPU machine lacks.
    .venv/bin/python - "$work/machine-site" "$venv" <<'PY'
import importlib.metadata as md
import os
import sys
import sysconfig
from pathlib import Path

farm, venv = Path(sys.argv[1]), Path(sys.argv[2])
lacking = {"diffusers", "pydantic", "pydantic-core", "fastapi", "starlette", "uvicorn", "httptools", "ctrlgen"}
site = Path(sysconfig.get_paths()["purelib"])
hidden = set()
for dist in md.distributions(path=[str(site)]):
    if dist.metadata["Name"].lower().replace("_", "-") in lacking:
        hidden |= {Path(f).parts[0] for f in dist.files or ()}
farm.mkdir(parents=True, exist_ok=True)
for entry in site.iterdir():
    if entry.name in hidden or entry.suffix == ".pth" or entry.name.startswith("__editable__"):
        continue
    (farm / entry.name).symlink_to(entry)
target = Path(next(venv.glob("lib/python3*/site-packages")))
(target / "_gpu_machine.pth").write_text(f"{farm}\n")
PY
else
    python="${PYTHON:-python3}"
    "$python" -m venv --system-site-packages "$venv" 2>/dev/null \
        || { rm -rf "$venv"; "$python" -m venv --system-site-packages --without-pip "$venv"; }
fi
if [[ -x "$venv/bin/pip" ]]; then pip=("$venv/bin/python" -m pip); else pip=("$python" -m pip --python "$venv/bin/python"); fi
# What the machine has stays as it is.
"$venv/bin/python" - > "$work/keep.txt" <<'PY'
import importlib.metadata as md
for name in ("torch", "torchvision", "transformers", "accelerate", "peft", "numpy", "tokenizers"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
PY
timeout 150 "${pip[@]}" install -q --disable-pip-version-check --no-index --find-links "$wheels" -c "$work/keep.txt" \
    "setuptools>=77" wheel diffusers pydantic fastapi uvicorn httptools pluggy
timeout 60 "${pip[@]}" install -q --disable-pip-version-check --no-index --no-deps --no-build-isolation -e .
"$venv/bin/python" -c "import ctrlgen, diffusers, pydantic, fastapi, uvicorn; print('gpu_check: ctrlgen', ctrlgen.__version__, 'diffusers', diffusers.__version__, 'from', diffusers.__file__)"

step "2. gpu tests"
mapfile -t gpu_tests < <(grep -rl "pytest.mark.gpu" tests --include='test_*.py' | sort)
timeout 150 "$venv/bin/python" -m pytest -q -m gpu -p no:cacheprovider "${gpu_tests[@]}" --junitxml "$out/gpu-tests.xml"

step "3. benchmarks"
name="$("$venv/bin/python" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")' \
    | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/-*$//')"
bench=(--json "$out/gpu-$name.json" --budget-s "$budget" --work "$work/models")
if ((smoke)); then bench+=(--cpu-smoke); fi
timeout 420 "$venv/bin/python" benchmarks/gpu_bench.py "${bench[@]}"
step "done: $out/gpu-$name.json, $out/gpu-tests.xml"
if [[ -z "${CTRLGEN_GPU_WORK:-}" ]]; then rm -rf "$work"; fi

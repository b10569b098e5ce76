#!/usr/bin/env bash
# The wheels bench/gpu.py needs that the lent GPU machines' image lacks (no network there), at the versions
# pinned in constraints.txt, for that image's Python (3.12, x86-64).
#   bash bench/gpu_wheels.sh              # here: download into .gpu-wheels/ (ignored by git)
#   bash bench/gpu_wheels.sh --install    # on the GPU machine, with .gpu-wheels carried: install them
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu-wheels
PACKAGES=(diffusers pydantic pydantic_core annotated-types typing-inspection importlib_metadata zipp)
if [[ "${1:-}" == "--install" ]]; then
    python3 -m pip install --no-index --no-deps --quiet "$WHEELS"/*.whl
    python3 -c "import diffusers, pydantic; print('diffusers', diffusers.__version__, 'pydantic', pydantic.__version__)"
    exit 0
fi
mkdir -p "$WHEELS"
pins=()
for name in "${PACKAGES[@]}"; do
    pin=$(grep -iE "^${name//[-_]/[-_]}==" constraints.txt || true)
    [[ -n "$pin" ]] || { echo "no pin for $name in constraints.txt" >&2; exit 1; }
    pins+=("$pin")
done
.venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$WHEELS" "${pins[@]}"
ls "$WHEELS"

#!/usr/bin/env bash
# Stage what scripts/gpu_train_jax.py needs on the GPU machine, as parts small enough to carry
# beside the working tree (64 MiB per call in all). Run here, in the repo root:
#   bash scripts/gpu_carry.sh [PART_MB]
# It writes .carry/ (ignored through .git/info/exclude):
#   .carry/whl/*.whl                                  keras, optree, namex, jsonschema + helpers, cxr
#   .carry/chest_xray.tar.partNN                      ../shared/data/chest_xray (224 px copies)
#   .carry/efficientnet_lite2_notop.weights.h5.partNN the converted Lite2 ImageNet weights
# and prints, for each part, the device command that copies it to ~/carry on the GPU machine
# (carry=[".carry/<part>"]); the last call runs the training (see docs/training.md, "Training on a GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
PART_MB=${1:-8}
grep -qx '/.carry/' .git/info/exclude 2>/dev/null || echo '/.carry/' >> .git/info/exclude
rm -rf .carry && mkdir -p .carry/whl
PY=${PYTHON:-.venv/bin/python}
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d .carry/whl keras optree namex jsonschema jsonschema-specifications referencing rpds-py
$PY -m pip wheel -q --no-deps -w .carry/whl .
tar -C ../shared/data -cf .carry/chest_xray.tar chest_xray
cp ~/.keras/models/efficientnet_lite2_notop.weights.h5 .carry/
for f in .carry/chest_xray.tar .carry/efficientnet_lite2_notop.weights.h5; do
  split -b "${PART_MB}m" -d -a 2 "$f" "$f.part" && rm "$f"
done
( cd .carry && tar -cf whl.tar whl && rm -rf whl && split -b "${PART_MB}m" -d -a 2 whl.tar whl.tar.part && rm whl.tar )
echo "tree to carry beside: $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes tracked"
for part in .carry/*.part*; do
  echo "run(carry=[\"$part\"], command=\"mkdir -p ~/carry && cp $part ~/carry/\")"
done
echo 'last: run(command="cd ~/carry && cat whl.tar.part* | tar -x && cd - && PYTHONUNBUFFERED=1 python3 scripts/gpu_train_jax.py")'

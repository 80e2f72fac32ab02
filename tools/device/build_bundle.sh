#!/usr/bin/env bash
# Build the wheel bundle the GPU machine needs (Python 3.12, torch 2.11.0+cu130, no registry).
# Run from the project root:   bash tools/device/build_bundle.sh [DEST]   (default: .whl)
# DEST is git-ignored (`/.whl/` and `*.whl` in .gitignore: never commit wheels); copy it next to
# the project on the GPU machine (docs/gpu.md).
# The device image already has (its pip list): numpy 2.5, torchvision 0.26, opencv-python-headless,
# matplotlib, scipy, pillow, pyyaml, rich, einops, markdown, packaging, click, tqdm, timm, pytest.
# So only the OpenMMLab packages and their small pure-Python deps travel. mmcv-lite 2.1.0 is
# mmcv without compiled ops (the project and mmpretrain's SimMIM need none; checked on CPU).
set -euo pipefail
DEST="${1:-.whl}"
mkdir -p "$DEST"
PY="$(tools/env.sh)/bin/python"   # any pip works; this is the project's
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --platform manylinux2014_x86_64 -d "$DEST" \
  mmengine==0.10.7 mmcv-lite==2.1.0 mmpretrain==1.2.0 \
  addict==2.4.0 yapf==0.43.0 platformdirs==4.14.9 termcolor==3.3.0 mat4py==0.6.0 \
  model-index==0.1.11 ordered-set==4.1.0 importlib-metadata==10.2.0 lazy-importer==0.1.0
ls -l "$DEST"
du -ch "$DEST"/*.whl | tail -1

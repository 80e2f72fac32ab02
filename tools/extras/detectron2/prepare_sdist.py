#!/usr/bin/env python
"""Unpack detectron2 v0.5 (the registry's ``detectron2-cdo==0.5`` sdist) and prepare it for a
pure-Python build: called by ``tools/env.sh`` for ``GREENMIM_MM_EXTRAS=detectron2``.

    python prepare_sdist.py detectron2_cdo-0.5.tar.gz OUT_DIR   # then: pip install OUT_DIR

The sdist is upstream detectron2 v0.5 without ``detectron2/layers/csrc`` (the C++ sources). Edits,
each checked to apply exactly as expected (a different sdist fails here, naming the edit):

1. ``setup.py``: no C++ extension (``ext_modules=[]``); the model-zoo configs, which the sdist
   keeps under ``detectron2/model_zoo/configs`` (``get_model_zoo_configs()`` looks for a top-level
   ``configs/``), become package data, so ``model_zoo.get_config_file`` finds them once installed.
2. Pillow >= 10 removed ``Image.LINEAR`` (``data/transforms/transform.py`` fails at import);
   ``Image.BILINEAR`` is the same filter.
3. numpy >= 1.24 removed the aliases ``np.bool/int/float/str/object`` (e.g. ``PolygonMasks`` in
   ``structures/masks.py``, used by Mask R-CNN's mask targets); they were the builtins.
4. ``detectron2/_C.py``: greenmim_mm's stand-in for the extension (``_C.py`` beside this file).

Nothing of detectron2 is stored in greenmim_mm; the sdist comes from the registry, pinned by hash
in ``requirements/detectron2.txt``.
"""
import argparse
import re
import shutil
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAND_IN = HERE / '_C.py'

SETUP_EDITS = [
    ('ext_modules=get_extensions(),', 'ext_modules=[],'),
    ('package_data={"detectron2.model_zoo": get_model_zoo_configs()},',
     'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},'),
]
PILLOW_EDIT = ('detectron2/data/transforms/transform.py', 'interp=Image.LINEAR', 'interp=Image.BILINEAR')
NUMPY_ALIAS = re.compile(r'\bnp\.(bool|int|float|str|object)\b')
NUMPY_ALIAS_COUNT = 18  # occurrences in detectron2 v0.5 (7 files)


class PrepareError(RuntimeError):
    pass


def replace_once(path: Path, old: str, new: str) -> None:
    """Replace the single occurrence of ``old`` in ``path``; error if there is not exactly one."""
    text = path.read_text()
    count = text.count(old)
    if count != 1:
        raise PrepareError(f'{path}: expected exactly one {old!r}, found {count}; '
                           'is this the detectron2-cdo 0.5 sdist?')
    path.write_text(text.replace(old, new))


def unpack(sdist: Path, out: Path) -> Path:
    """Extract ``sdist`` (tar.gz) into ``out``; return the source root (the one top folder)."""
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(out, filter='data')  # no absolute paths, links out or device files
    roots = [p for p in out.iterdir() if p.is_dir()]
    if len(roots) != 1 or not (roots[0] / 'setup.py').is_file():
        raise PrepareError(f'{sdist}: expected one top folder with setup.py, got {roots}')
    return roots[0]


def fix_numpy_aliases(root: Path) -> int:
    """``np.bool`` -> ``bool`` etc. in every .py file under ``root``; return the count."""
    total = 0
    for path in sorted(root.rglob('*.py')):
        text = path.read_text()
        new, n = NUMPY_ALIAS.subn(lambda m: m.group(1), text)
        if n:
            path.write_text(new)
            total += n
    if total != NUMPY_ALIAS_COUNT:
        raise PrepareError(f'{root}: expected {NUMPY_ALIAS_COUNT} removed numpy aliases, '
                           f'found {total}; is this the detectron2-cdo 0.5 sdist?')
    return total


def prepare(sdist: Path, out: Path) -> Path:
    root = unpack(sdist, out)
    if (root / 'detectron2' / 'layers' / 'csrc').exists():
        raise PrepareError(f'{sdist} has the C++ sources: build it as it is, not with this script')
    for old, new in SETUP_EDITS:
        replace_once(root / 'setup.py', old, new)
    rel, old, new = PILLOW_EDIT
    replace_once(root / rel, old, new)
    fix_numpy_aliases(root)
    target = root / 'detectron2' / '_C.py'
    if target.exists():
        raise PrepareError(f'{target} exists already')
    shutil.copyfile(STAND_IN, target)
    return root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('sdist', type=Path, help='detectron2_cdo-0.5.tar.gz')
    parser.add_argument('out', type=Path, help='empty folder to unpack into')
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f'prepare_sdist: error: {args.out} is not empty')
    try:
        root = prepare(args.sdist, args.out)
    except (PrepareError, tarfile.TarError, OSError) as err:
        raise SystemExit(f'prepare_sdist: error: {err}')
    print(root)
    return 0


if __name__ == '__main__':
    sys.exit(main())

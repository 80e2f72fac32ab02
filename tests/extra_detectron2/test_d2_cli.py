"""tools/train_detectron2.py's options: parsed with the standard library, so ``--help`` answers
at once (issue 22, item 5: under 2 s) where detectron2 is installed, and the same options as
detectron2's ``default_argument_parser()`` (plus ``--demo-root``)."""
import argparse
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip('detectron2', reason='needs the extra: GREENMIM_MM_EXTRAS=detectron2')

from d2_utils import REPO  # noqa: E402

TOOL = os.path.join(REPO, 'tools', 'train_detectron2.py')
HEAVY = ('torch', 'detectron2', 'mmengine', 'greenmim_mm', 'fvcore')


def actions(parser: argparse.ArgumentParser) -> dict:
    return {a.dest: (tuple(a.option_strings), a.default, a.type, a.nargs, a.const,
                     type(a).__name__) for a in parser._actions if a.dest != 'help'}


def test_options_are_detectron2s_default_argument_parser_and_demo_root():
    from detectron2.engine import default_argument_parser

    from greenmim_mm.apis import cli_args
    ours, theirs = actions(cli_args.detectron2_train_parser()), actions(default_argument_parser())
    assert ours.pop('demo_root') == (('--demo-root', ), 'data/demo/coco', None, None, None,
                                     '_StoreAction')
    assert ours == theirs
    argv = ['--config-file', 'c.yaml', '--num-gpus', '2', '--resume', 'MODEL.WEIGHTS', 'w.pth',
            'SOLVER.BASE_LR', '0.1']
    assert vars(cli_args.parse_detectron2_train_args(argv)) == dict(
        vars(default_argument_parser().parse_args(argv)), demo_root='data/demo/coco')


def test_help_imports_nothing_heavy_and_takes_under_two_seconds(tmp_path):
    run = subprocess.run([sys.executable, '-X', 'importtime', TOOL, '--help'], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert 'usage: train_detectron2.py' in run.stdout and '--demo-root' in run.stdout
    imported = {line.rsplit('|', 1)[-1].strip() for line in run.stderr.splitlines()
                if line.startswith('import time:')}
    heavy = sorted(m for m in imported if m.split('.')[0] in HEAVY)
    assert not heavy, heavy[:5]
    best = float('inf')
    for _ in range(3):  # best of three: the machine is shared
        start = time.perf_counter()
        run = subprocess.run([sys.executable, TOOL, '--help'], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        best = min(best, time.perf_counter() - start)
        assert run.returncode == 0, run.stderr[-2000:]
    assert best < 2.0, f'train_detectron2.py --help took {best:.2f} s'

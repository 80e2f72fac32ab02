"""Evaluate a checkpoint: ``python tools/test.py CONFIG CHECKPOINT`` (``mim test greenmim_mm``)."""
import argparse
import os.path as osp
import sys

from mmengine.config import Config
from mmengine.runner import Runner

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from train import parse_common, setup_cpu_distributed  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (evaluate) a checkpoint')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where the evaluation logs go')
    return parse_common(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    import greenmim_mm  # noqa: F401
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'checkpoint not found: {args.checkpoint}')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.load_from = args.checkpoint
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        './work_dirs', osp.splitext(osp.basename(args.config))[0])
    setup_cpu_distributed(cfg)
    from greenmim_mm.checkpoint_loading import CheckpointLoadError
    try:
        metrics = Runner.from_cfg(cfg).test()
    except CheckpointLoadError as err:  # a refused or unreadable checkpoint: one line, exit 1
        raise SystemExit(f'test: error: {err}')
    print(metrics)


if __name__ == '__main__':
    main()

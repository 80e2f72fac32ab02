"""Train with a greenmim_mm (or any mmpretrain/mmdet) config: ``python tools/train.py CONFIG``.

Also the script ``mim train greenmim_mm CONFIG`` runs (from the package's ``.mim/tools``).
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.runner import Runner


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model with an mmengine config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from the given checkpoint, or from the latest one in the '
                        'work dir when no path is given')
    parser.add_argument('--amp', action='store_true', help='mixed-precision training')
    parser.add_argument('--no-validate', action='store_true', help='skip validation')
    return parse_common(parser, argv)


def parse_common(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Add the options train.py and test.py share (config overrides, launcher, local rank; mim
    and torch.distributed.launch pass --local-rank) and parse."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. train_cfg.max_epochs=2')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_config(args) -> Config:
    """Load the config and apply the command-line options."""
    import greenmim_mm  # noqa: F401  (registers the plugin and applies its compat patches)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    return cfg


def setup_cpu_distributed(cfg: Config) -> None:
    """``--launcher pytorch`` without CUDA: mmengine 0.10's launcher calls
    ``torch.cuda.set_device`` and wraps the model with ``device_ids=[LOCAL_RANK]``; start the gloo
    process group here instead (the Runner then skips its own init) and wrap without device ids."""
    import torch
    import torch.distributed as dist
    if cfg.launcher != 'pytorch' or torch.cuda.is_available():
        return
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper


def main(argv=None):
    cfg = build_config(parse_args(argv))
    from greenmim_mm.checkpoint_loading import CheckpointLoadError
    setup_cpu_distributed(cfg)
    try:
        runner = Runner.from_cfg(cfg)
        runner.train()
    except CheckpointLoadError as err:  # a refused or unreadable checkpoint: one line, exit 1
        raise SystemExit(f'train: error: {err}')


if __name__ == '__main__':
    main()

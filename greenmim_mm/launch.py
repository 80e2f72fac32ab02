"""Launching training and evaluation from an mmengine config (``tools/train.py``,
``tools/test.py``, ``mim train/test greenmim_mm``).

Command-line options shared by both (config overrides, launcher, local rank), the config built
from them, and CPU distributed runs (gloo) that mmengine 0.10's launcher does not support.
"""
import argparse
import os
import os.path as osp
from typing import Optional, Sequence, Tuple

from mmengine.config import Config, DictAction


# ------------------------------------------------------------------------------ options
def add_common_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options train and test share: config overrides, launcher, local rank (mim and
    ``torch.distributed.launch`` pass ``--local-rank``)."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. train_cfg.max_epochs=2')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def parse_common(parser: argparse.ArgumentParser,
                 argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Add the common options, parse, and export ``LOCAL_RANK`` (unless already set)."""
    args = add_common_options(parser).parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def parse_train_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='train.py',
                                     description='Train a model with an mmengine config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from the given checkpoint, or from the latest one in the '
                        'work dir when no path is given')
    parser.add_argument('--resume-schedule', choices=['checkpoint', 'config'], default=None,
                        help='--resume with a parameter schedule that differs from the '
                        "checkpoint's: keep the checkpoint's (default, with a warning) or take "
                        "the config's (the lrs of an uninterrupted run with it)")
    parser.add_argument('--amp', action='store_true', help='mixed-precision training')
    parser.add_argument('--no-validate', action='store_true', help='skip validation')
    return parse_common(parser, argv)


def parse_test_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='test.py', description='Test (evaluate) a checkpoint')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where the evaluation logs go')
    return parse_common(parser, argv)


# ------------------------------------------------------------------------------ configs
def load_config(args: argparse.Namespace) -> Config:
    """The config file with ``--cfg-options``, the launcher and the work dir applied
    (``--work-dir``, else the config's, else ``./work_dirs/<config name>``)."""
    import greenmim_mm  # noqa: F401  (registers the plugin and applies its compat patches)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        variables = {k: cfg[k] for k in RECIPE_VARIABLES if k in cfg}
        cfg.merge_from_dict(args.cfg_options)
        apply_recipe_variables(cfg, args.cfg_options, variables)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


# Top-level variables of our recipes -> the entries they set when the file is read (mmengine
# resolves variables at parse time, so overriding only the variable would change nothing).
RECIPE_VARIABLES = {'accumulation': 'optim_wrapper.accumulative_counts',
                    'batch_size': 'train_dataloader.batch_size'}


def apply_recipe_variables(cfg: Config, options: dict, variables: dict) -> None:
    """``--cfg-options accumulation=2`` (or ``batch_size=``) on a config that defines that
    variable also sets the entry it feeds (:data:`RECIPE_VARIABLES`), unless the options set
    that entry explicitly (then the explicit entry wins)."""
    for name, entry in RECIPE_VARIABLES.items():
        if name in options and name in variables and entry not in options:
            cfg.merge_from_dict({entry: options[name]})


def build_train_config(args: argparse.Namespace) -> Config:
    """The training config for parsed :func:`parse_train_args` options (see
    :func:`configure_training`)."""
    return configure_training(args)[0]


def configure_training(args: argparse.Namespace) -> Tuple[Config, Optional[str]]:
    """The training config for parsed :func:`parse_train_args` options, and what ``--resume``
    does, for the log (:func:`resolve_resume`).

    Raises:
        FileNotFoundError: ``--resume`` names a checkpoint that does not exist.
    """
    cfg = load_config(args)
    if getattr(args, 'resume_schedule', None):
        cfg.resume_schedule = args.resume_schedule  # read by GreenRunner.resume
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    note = resolve_resume(cfg, args.resume)
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    return cfg, note


def resolve_resume(cfg: Config, resume: Optional[str]) -> Optional[str]:
    """Set ``cfg.resume`` / ``cfg.load_from`` for ``--resume [CHECKPOINT]``; return a message for
    the log when mmengine's own would mislead (else None).

    * ``--resume`` alone: mmengine resumes from the checkpoint ``<work_dir>/last_checkpoint``
      names (``find_latest_checkpoint``; it logs "Auto resumed from the latest checkpoint X.").
      With no ``last_checkpoint`` training starts fresh and the message says so (mmengine alone
      would log "Auto resumed from the latest checkpoint None." and start fresh silently).
    * ``--resume CHECKPOINT``: that file.

    Raises:
        FileNotFoundError: the named checkpoint (or the one ``last_checkpoint`` names) does not
            exist; the message names the path. URLs (``scheme://``) are left to mmengine.
    """
    if resume is None:
        return None
    if resume != 'auto':
        _check_exists(resume, 'checkpoint to resume from not found')
        cfg.resume, cfg.load_from = True, resume
        return None
    from mmengine.runner import find_latest_checkpoint
    latest = find_latest_checkpoint(cfg.work_dir)
    if latest is None:
        cfg.resume = False
        return (f'--resume: no checkpoint to resume from in {osp.abspath(cfg.work_dir)} '
                '(no last_checkpoint file): starting fresh')
    _check_exists(latest, f'{osp.join(cfg.work_dir, "last_checkpoint")} names a checkpoint '
                  'that does not exist')
    cfg.resume, cfg.load_from = True, None  # mmengine finds the same file and says so
    return None


def _check_exists(path: str, what: str) -> None:
    if '://' not in path and not osp.isfile(path):
        raise FileNotFoundError(f'{what}: {path}')


def build_test_config(args: argparse.Namespace) -> Config:
    """The evaluation config for parsed :func:`parse_test_args` options.

    Raises:
        FileNotFoundError: the checkpoint does not exist (named in the message).
    """
    _check_exists(args.checkpoint, 'checkpoint not found')
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
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


# ------------------------------------------------------------------------------ entry points
def main_train(argv: Optional[Sequence[str]] = None):
    """``tools/train.py``: build the config and the Runner, train; returns the Runner."""
    from greenmim_mm.checkpoint_loading import CheckpointLoadError
    try:
        cfg, note = configure_training(parse_train_args(argv))
    except FileNotFoundError as err:
        raise SystemExit(f'train: error: {err}')
    setup_cpu_distributed(cfg)
    try:
        runner = train_runner_class(cfg).from_cfg(cfg)
        if note:
            runner.logger.warning(note)
        runner.train()
    except CheckpointLoadError as err:  # a refused or unreadable checkpoint: one line, exit 1
        raise SystemExit(f'train: error: {err}')
    return runner


def train_runner_class(cfg: Config):
    """The config's ``runner_type`` if it names one, else :class:`GreenRunner` (mmengine's
    Runner with ``auto_scale_lr`` counting gradient accumulation and the resume schedule
    check, ``greenmim_mm/engine/runner.py``).

    Raises:
        KeyError: ``runner_type`` names no registered runner.
    """
    from greenmim_mm.engine.runner import GreenRunner
    from greenmim_mm.registry import RUNNERS
    if not cfg.get('runner_type'):
        return GreenRunner
    runner_cls = RUNNERS.get(cfg.runner_type)
    if runner_cls is None:
        raise KeyError(f'runner_type {cfg.runner_type!r} is not a registered runner')
    return runner_cls


def main_test(argv: Optional[Sequence[str]] = None) -> dict:
    """``tools/test.py``: evaluate a checkpoint, print and return the metrics."""
    from mmengine.runner import Runner
    args = parse_test_args(argv)
    try:
        cfg = build_test_config(args)
    except FileNotFoundError as err:
        raise SystemExit(f'test: error: {err}')
    setup_cpu_distributed(cfg)
    from greenmim_mm.checkpoint_loading import CheckpointLoadError
    try:
        metrics = Runner.from_cfg(cfg).test()
    except CheckpointLoadError as err:  # a refused or unreadable checkpoint: one line, exit 1
        raise SystemExit(f'test: error: {err}')
    print(metrics)
    return metrics

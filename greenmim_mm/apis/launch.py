"""Launching training and evaluation from an mmengine config (``tools/train.py``,
``tools/test.py``, ``mim train/test greenmim_mm``).

Command-line options shared by both (config overrides, launcher, local rank), the config built
from them, and CPU distributed runs (gloo) that mmengine 0.10's launcher does not support.
"""
import argparse
import os
import os.path as osp
import re
from typing import Optional, Sequence, Tuple

from mmengine.config import Config

# the parsers are standard-library only, so the tools answer --help before importing the stack
from .cli_args import (add_common_options, parse_common, parse_test_args,  # noqa: F401
                       parse_train_args)


# ------------------------------------------------------------------------------ configs
def load_config(args: argparse.Namespace) -> Config:
    """The config file with ``--cfg-options``, the launcher and the work dir applied
    (``--work-dir``, else the config's, else ``./work_dirs/<config name>``)."""
    import greenmim_mm  # noqa: F401  (registers the plugin and applies its compat patches)
    check_exists(args.config, 'config file not found (a path; `mim train greenmim_mm NAME` '
                  'finds a shipped config by its file name)')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        variables = {k: cfg[k] for k in RECIPE_VARIABLES if k in cfg}
        args.cfg_option_originals = option_originals(cfg, args.cfg_options)
        try:
            cfg.merge_from_dict(args.cfg_options)
        except (KeyError, TypeError) as err:  # mmengine's merge refused what the walk allowed
            raise CfgOptionsError(f'--cfg-options: {" ".join(str(err).split())} (config '
                                  f'{args.config})') from None
        apply_recipe_variables(cfg, args.cfg_options, variables)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


class CfgOptionsError(ValueError):
    """A ``--cfg-options`` key the config cannot take (a list index out of range, a key below a
    plain value); the message names the option and the fix."""


MISSING = object()  # an option key the config does not have (the option adds it)


def option_originals(cfg: Config, options: dict) -> dict:
    """Each option key's value in ``cfg`` before the options are merged (:data:`MISSING` for a
    key the option adds), walking the key's dotted path as mmengine's ``merge_from_dict`` does
    (digits index lists).

    Raises:
        CfgOptionsError: a part of the path indexes a list out of range or by a name, or lies
            below a plain value (e.g. ``train_cfg.max_epochs.x``), or a key of three parts or
            more starts with a top-level name the config lacks within two edits of one it has
            (``modle.backbone.arch``: the Runner would ignore it); the message names the option.
    """
    originals = {}
    for key in options:
        node, parts = cfg._cfg_dict, key.split('.')
        for depth, part in enumerate(parts):
            where = '.'.join(parts[:depth]) or 'the config'
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise CfgOptionsError(
                        f'--cfg-options {key}: {where} is a list of {len(node)} entries; name '
                        f'one by its index (0 to {len(node) - 1}) or set the whole list '
                        f'({where}=[...])')
                node = node[int(part)]
            elif isinstance(node, dict):
                near = [k for k in node if edit_distance(part, str(k)) <= 2] if (
                    depth == 0 and part not in node and len(parts) > 2) else []
                if near:  # nothing reads a new top-level dict: a typo of an existing one
                    raise CfgOptionsError(
                        f'--cfg-options {key}: the config has no {part!r} (did you mean '
                        f'{near[0]!r}?); check the key against the config (spelling, level)')
                node = node.get(part, MISSING)
                if node is MISSING:
                    break
            else:
                raise CfgOptionsError(
                    f'--cfg-options {key}: {where} is {node!r}, not a dict or list, so it has no '
                    f'{part!r}; set {where}=VALUE itself or check the key against the config '
                    '(spelling, level)')
        originals[key] = node
    return originals


def edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance (insertions, deletions, substitutions, adjacent
    transpositions) between ``a`` and ``b``."""
    rows = [list(range(len(b) + 1))]
    for i, ca in enumerate(a, 1):
        row = [i]
        for j, cb in enumerate(b, 1):
            row.append(min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (ca != cb)))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


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
    if getattr(args, 'partial_load', False):
        cfg.default_hooks.checkpoint.strict_load = False
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
        check_exists(resume, 'checkpoint to resume from not found')
        cfg.resume, cfg.load_from = True, resume
        return None
    from mmengine.runner import find_latest_checkpoint
    latest = find_latest_checkpoint(cfg.work_dir)
    if latest is None:
        cfg.resume = False
        return (f'--resume: no checkpoint to resume from in {osp.abspath(cfg.work_dir)} '
                '(no last_checkpoint file): starting fresh')
    check_exists(latest, f'{osp.join(cfg.work_dir, "last_checkpoint")} names a checkpoint '
                  'that does not exist')
    cfg.resume, cfg.load_from = True, None  # mmengine finds the same file and says so
    return None


def check_exists(path: str, what: str) -> None:
    if '://' not in path and not osp.isfile(path):
        raise FileNotFoundError(f'{what}: {path}')


def build_test_config(args: argparse.Namespace) -> Config:
    """The evaluation config for parsed :func:`parse_test_args` options.

    Raises:
        FileNotFoundError: the checkpoint does not exist (named in the message).
    """
    check_exists(args.checkpoint, 'checkpoint not found')
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
def user_error_line(tool: str, err: BaseException) -> str:
    """The one line a tool prints for a known user error (a missing file, a refused checkpoint,
    weights that do not fit the model, a model config that cannot train): the problem as the
    error states it, and the fix."""
    text = ' '.join(str(err).split())
    if isinstance(err, FileNotFoundError) and 'not found' not in text:
        text += (' (check the paths in the config or in --cfg-options: the datasets\' data_root '
                 'and data_prefix, the backbone\'s init_cfg.checkpoint, load_from)')
    return f'{tool}: error: {text}'


def cfg_option_error(err: BaseException, options: Optional[dict],
                     originals: Optional[dict] = None) -> Optional[str]:
    """The one-line message for an error a well-formed but wrong ``--cfg-options`` option caused
    when mmengine built or ran a component from the config, else None (the error is not the
    options').

    * ``TypeError: ...got an unexpected keyword argument 'NAME'`` (the component takes no such
      argument) and an option key with a part ``NAME``: a misspelt or misplaced key, the last
      part (``model.backbone.nonexistent_key=1``) or one above it (``model.bakbone.arch=tiny``);
    * ``KeyError: 'X is not in the ... registry'`` (mmengine ``Registry.build``) and an option
      ``....type=X``;
    * a ``TypeError``, ``ValueError`` or ``AssertionError`` and an option whose value is the
      wrong kind for the entry it replaces (``originals``: :func:`option_originals`; e.g. the
      text ``abc`` for the float ``drop_path_rate``, a list for the int ``window_size``) or a
      text value (3 characters or more) the error names as a word (``arch=nope``: "Arch nope
      is not in default archs").
    """
    # str(KeyError) quotes its message; the message itself is args[0]
    message = err.args[0] if isinstance(err, KeyError) and err.args else err
    text = ' '.join(str(message).split())
    if not options:
        return None
    if isinstance(err, TypeError):
        found = re.search(r"unexpected keyword argument '(\w+)'", text)
        for key in options if found else ():
            parts = key.split('.')
            if found.group(1) in parts:
                depth = len(parts) - 1 - parts[::-1].index(found.group(1))
                owner = '.'.join(parts[:depth]) or 'the config'
                return (f'--cfg-options {key}: {owner} takes no argument {found.group(1)!r} '
                        f'({text}); check the key against {owner} in the config (spelling, '
                        'level) or drop the option')
    if isinstance(err, KeyError):
        keys = [k for k, v in options.items() if k.rpartition('.')[2] == 'type'
                and isinstance(v, str) and re.search(rf'\b{re.escape(v)} is not in the', text)]
        if keys:
            return (f'--cfg-options {keys[0]}={options[keys[0]]}: {text}; use a registered type '
                    '(greenmim_mm.*, or mmpretrain/mmdet names) or drop the option')
    if isinstance(err, (TypeError, ValueError, AssertionError)):
        for key, value in options.items():
            old = (originals or {}).get(key, MISSING)
            if wrong_kind(value, old) or (isinstance(value, str) and len(value) > 2 and re.search(
                    rf'(?<![\w.]){re.escape(value)}(?![\w.])', text)):
                was = '' if old is MISSING else f' (the config has {short_repr(old)})'
                return (f'--cfg-options {key}={value!r}{was}: check the value or drop the '
                        f'option ({type(err).__name__}: {text})')
    return None


def short_repr(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'


def wrong_kind(value, old) -> bool:
    """Whether option ``value`` is not the kind of config value ``old`` it replaces (numbers
    stand for numbers, lists for lists or tuples; None and a missing entry take anything)."""
    if old is MISSING or old is None or value is None:
        return False
    kinds = ((bool, ), (int, float), (list, tuple), (str, ), (dict, ))
    kind = next((k for k in kinds if isinstance(old, k)), (type(old), ))
    return not isinstance(value, kind) or (isinstance(value, bool) and kind != (bool, ))


def known_user_errors() -> tuple:
    """The known user errors the entry points print as one line (exit 1), no traceback: missing
    files, a refused or unreadable checkpoint or pretrained weights that do not fit the backbone
    (``CheckpointLoadError``, ``PretrainedLoadError``, ``CheckpointMismatchError``), another live
    run in the work dir (``WorkDirBusyError``), a model config that cannot train
    (``ModelConfigError``: e.g. a decoder's ``in_channels`` not its backbone output's width)."""
    from greenmim_mm.checkpoint.loading import CheckpointLoadError
    from greenmim_mm.engine.work_dir_lock import WorkDirBusyError
    from greenmim_mm.models.algorithms.greenmim import ModelConfigError
    return (FileNotFoundError, CheckpointLoadError, ModelConfigError, WorkDirBusyError,
            CfgOptionsError)


def main_train(argv: Optional[Sequence[str]] = None):
    """``tools/train.py``: build the config and the Runner, train; returns the Runner. Known
    user errors (:func:`known_user_errors`) exit with one line (:func:`user_error_line`)."""
    from greenmim_mm.engine import LearningRateOverflowError, NonFiniteLossError
    from greenmim_mm.engine.checkpoint_hook import learning_rate_text
    from greenmim_mm.engine.work_dir_lock import lock_work_dir
    args = parse_train_args(argv)
    known = known_user_errors()
    runner = None
    try:
        cfg, note = configure_training(args)
        if int(os.environ.get('RANK', '0')) == 0:
            lock_work_dir(cfg.work_dir)  # before the Runner writes anything there
        setup_cpu_distributed(cfg)
        runner = train_runner_class(cfg).from_cfg(cfg)
        if note:
            runner.logger.warning(note)
        runner.train()
    except known as err:
        raise SystemExit(user_error_line('train', err))
    except (TypeError, KeyError, ValueError, AssertionError) as err:  # a wrong --cfg-options
        line = cfg_option_error(err, args.cfg_options,  # option, else not a user error
                                getattr(args, 'cfg_option_originals', None))
        if line is None:
            raise
        raise SystemExit(f'train: error: {line}') from None
    except NonFiniteLossError as err:  # diverged: the message names the lr
        if runner is not None and '(lr ' not in str(err) and \
                not isinstance(err, LearningRateOverflowError):
            err.args = (f'{err} If the loss diverged, lower the learning rate '
                        f'({learning_rate_text(runner)}).', )
        raise
    return runner


def train_tool(argv: Optional[Sequence[str]] = None):
    """``tools/train.py``'s ``__main__``: :func:`main_train`, whose ``NonFiniteLossError`` (a
    diverged run, an lr the weights' dtype cannot hold) ends with one line ``train: error:
    ...`` and exit status 1 instead of a traceback (:func:`main_train` itself raises it, for
    callers that handle it)."""
    from greenmim_mm.engine import NonFiniteLossError
    try:
        return main_train(argv)
    except NonFiniteLossError as err:
        raise SystemExit(f'train: error: {err}') from None
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
    """``tools/test.py``: evaluate a checkpoint, print and return the metrics (known user errors:
    one line, as :func:`main_train`)."""
    from mmengine.runner import Runner
    args = parse_test_args(argv)
    known = known_user_errors()
    try:
        cfg = build_test_config(args)
        setup_cpu_distributed(cfg)
        metrics = Runner.from_cfg(cfg).test()
    except known as err:
        raise SystemExit(user_error_line('test', err))
    except (TypeError, KeyError, ValueError, AssertionError) as err:
        line = cfg_option_error(err, args.cfg_options,
                                getattr(args, 'cfg_option_originals', None))
        if line is None:
            raise
        raise SystemExit(f'test: error: {line}') from None
    print(metrics)
    return metrics

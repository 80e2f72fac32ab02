"""``GreenRunner``: mmengine's ``Runner`` with two fixes tools/train.py relies on.

1. ``auto_scale_lr`` counts gradient accumulation (mmengine#894, mmdet#10728): the batch an
   optimizer step sees is GPUs x per-GPU batch x ``optim_wrapper.accumulative_counts``, and the
   linear scaling rule (Goyal et al. 2017, as mmengine's ``Runner.scale_lr``) scales the lr by
   that over ``base_batch_size``. mmengine counts GPUs x batch only. The log states the
   effective batch and the lr.
2. ``--resume`` with a parameter schedule that differs from the checkpoint's (mmengine#1565):
   mmengine silently keeps the checkpoint's schedulers (a cosine extended from 2 to 4 epochs
   stays frozen at the old end's lr). This runner warns once, naming both schedules, and with
   ``cfg.resume_schedule = 'config'`` (``tools/train.py --resume-schedule config``) takes the
   config's schedule: the lr of every step is then the one an uninterrupted run with the
   config's schedule has (its schedulers are replayed to the resumed iteration).
"""
import copy
import warnings
from typing import Dict, List, Optional

from mmengine.optim import OptimWrapper, OptimWrapperDict
from mmengine.optim.scheduler import _ParamScheduler
from mmengine.runner import EpochBasedTrainLoop, Runner
from torch.utils.data import DataLoader

from greenmim_mm.registry import RUNNERS

RESUME_SCHEDULES = ('checkpoint', 'config')
# Scheduler state that is progress, not schedule.
PROGRESS_KEYS = ('last_step', '_global_step', '_last_value', 'verbose',
                 '_get_lr_called_within_step')


def effective_batch(world_size: int, batch_size: int, accumulative_counts: int) -> int:
    """Images per optimizer step: GPUs x per-GPU batch x accumulation steps."""
    return int(world_size) * int(batch_size) * int(accumulative_counts)


def flat_schedulers(schedulers) -> List[_ParamScheduler]:
    """The runner's built schedulers (a list, or a dict of lists per optimizer) as one list."""
    if schedulers is None:
        return []
    if isinstance(schedulers, dict):
        return [s for group in schedulers.values() for s in group]
    return list(schedulers)


def schedule_of(state: dict) -> dict:
    """A scheduler's ``state_dict`` without its progress: what defines the schedule."""
    return {k: v for k, v in state.items() if k not in PROGRESS_KEYS}


def short(value) -> str:
    """A field for the log: lists of many per-group values (``base_values``) as their range."""
    if isinstance(value, (list, tuple)) and len(value) > 3:
        try:
            return f'[{min(value):.6g} .. {max(value):.6g}] ({len(value)} groups)'
        except TypeError:
            return f'{type(value).__name__} of {len(value)}'
    return repr(value)


def describe(name: str, schedule: dict, keys) -> str:
    return f'{name}(' + ', '.join(f'{k}={short(schedule.get(k))}' for k in keys) + ')'


def schedule_difference(names: List[str], config: List[dict], checkpoint: List[dict]) -> str:
    """'' when the config's schedulers (state dicts) define the checkpoint's schedule, else
    one line per differing scheduler naming both versions of the differing fields."""
    lines = []
    if len(config) != len(checkpoint):
        lines.append(f'{len(config)} schedulers in the config, {len(checkpoint)} in the '
                     'checkpoint')
    for i, (name, ours, theirs) in enumerate(zip(names, config, checkpoint)):
        ours, theirs = schedule_of(ours), schedule_of(theirs)
        keys = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if keys:
            lines.append(f'scheduler {i}: checkpoint {describe(name, theirs, keys)}, config '
                         f'{describe(name, ours, keys)}')
    return '; '.join(lines)


@RUNNERS.register_module()
class GreenRunner(Runner):
    """mmengine ``Runner`` whose ``auto_scale_lr`` counts gradient accumulation and whose
    resume checks the parameter schedule (see the module doc). ``cfg.resume_schedule``:
    ``'checkpoint'`` (default, mmengine's behaviour, with a warning when the schedules differ)
    or ``'config'``."""

    # ------------------------------------------------------------------ auto_scale_lr
    def scale_lr(self, optim_wrapper: OptimWrapper, auto_scale_lr: Optional[Dict] = None) -> None:
        """Scale every group's lr by effective batch / ``base_batch_size`` (module doc, 1).

        Raises:
            ValueError: ``auto_scale_lr`` is enabled without ``base_batch_size``.
            RuntimeError: the parameter schedulers are already built (mmengine's rule: they
                record the lr at build).
        """
        if auto_scale_lr is None or not auto_scale_lr.get('enable', False):
            return
        if 'base_batch_size' not in auto_scale_lr:
            raise ValueError(f'auto_scale_lr needs base_batch_size; got {dict(auto_scale_lr)}')
        if any(isinstance(s, _ParamScheduler) for s in flat_schedulers(self.param_schedulers)):
            raise RuntimeError('scale_lr must be called before the parameter schedulers are '
                               'built (they store the initial lr)')
        loader = self._train_dataloader
        batch = loader.batch_size if isinstance(loader, DataLoader) else loader['batch_size']
        base = auto_scale_lr['base_batch_size']
        wrappers = (list(optim_wrapper.values()) if isinstance(optim_wrapper, OptimWrapperDict)
                    else [optim_wrapper])
        for wrapper in wrappers:
            accum = getattr(wrapper, '_accumulative_counts', 1)
            images = effective_batch(self.world_size, batch, accum)
            ratio = float(images) / float(base)
            for group in wrapper.optimizer.param_groups:
                group['lr'] = group['lr'] * ratio
            lr = wrapper.optimizer.defaults.get('lr')
            self.logger.info(
                f'auto_scale_lr: effective batch {images} images per optimizer step '
                f'({self.world_size} GPUs x {batch} per GPU x {accum} accumulation steps), '
                f'base batch {base}: lr x {ratio:g}'
                + (f', {lr:g} -> {lr * ratio:g}' if lr is not None else ''))

    # ------------------------------------------------------------------ resume
    def resume(self, filename: str, resume_optimizer: bool = True,
               resume_param_scheduler: bool = True, map_location='default') -> None:
        """mmengine's resume, then the schedule check of the module doc (2).

        Raises:
            ValueError: ``cfg.resume_schedule`` is not 'checkpoint' or 'config'.
        """
        policy = (self.cfg.get('resume_schedule', None) if self.cfg is not None
                  else None) or 'checkpoint'
        if policy not in RESUME_SCHEDULES:
            raise ValueError(f'resume_schedule must be one of {RESUME_SCHEDULES}; got {policy!r}')
        schedulers = flat_schedulers(self.param_schedulers)
        if not (resume_param_scheduler and schedulers
                and all(isinstance(s, _ParamScheduler) for s in schedulers)):
            return super().resume(filename, resume_optimizer, resume_param_scheduler,
                                  map_location)
        fresh = [copy.deepcopy(s.state_dict()) for s in schedulers]
        fresh_groups = self._group_values()
        self._loaded_schedules = []
        super().resume(filename, resume_optimizer, resume_param_scheduler, map_location)
        names = [type(s).__name__ for s in schedulers]
        loaded = self._loaded_schedules
        difference = schedule_difference(names, fresh, loaded) if loaded else ''
        if not difference:
            return
        if policy == 'checkpoint':
            self.logger.warning(
                f'--resume: the checkpoint {filename} was trained with another parameter '
                f'schedule than the config ({difference}); continuing with the checkpoint\'s '
                'schedule (mmengine\'s behaviour). To take the config\'s schedule, pass '
                '--resume-schedule config (cfg.resume_schedule = "config").')
            return
        self._restart_schedule(schedulers, fresh, fresh_groups)
        self.logger.warning(
            f'--resume: the checkpoint {filename} was trained with another parameter schedule '
            f'than the config ({difference}); taking the config\'s schedule '
            f'(resume_schedule="config"): replayed to iteration {self.iter}, lr now '
            f'{max(self._lrs()):.6g}.')

    def load_checkpoint(self, filename: str, *args, **kwargs) -> dict:
        """mmengine's, recording the checkpoint's scheduler states for :meth:`resume`."""
        checkpoint = super().load_checkpoint(filename, *args, **kwargs)
        self._loaded_schedules = flat_schedulers(checkpoint.get('param_schedulers'))
        return checkpoint

    def _optimizers(self):
        wrapper = self.optim_wrapper
        wrappers = (list(wrapper.values()) if isinstance(wrapper, OptimWrapperDict)
                    else [wrapper])
        return [w.optimizer for w in wrappers]

    def _group_values(self) -> List[List[dict]]:
        """Every optimizer group's hyper-parameters (no tensors), per optimizer."""
        return [[copy.deepcopy({k: v for k, v in g.items() if k != 'params'})
                 for g in opt.param_groups] for opt in self._optimizers()]

    def _lrs(self) -> List[float]:
        return [g['lr'] for opt in self._optimizers() for g in opt.param_groups]

    def _restart_schedule(self, schedulers: List[_ParamScheduler], fresh: List[dict],
                          fresh_groups: List[List[dict]]) -> None:
        """The config's schedulers at the resumed iteration: their state and the groups'
        hyper-parameters as built, then every step an uninterrupted run made (mmengine's
        ``ParamSchedulerHook``: iteration-based schedulers after every iteration, epoch-based
        ones after every epoch)."""
        for opt, groups in zip(self._optimizers(), fresh_groups):
            for group, values in zip(opt.param_groups, groups):
                group.update(copy.deepcopy(values))
        for scheduler, state in zip(schedulers, fresh):
            scheduler.load_state_dict(copy.deepcopy(state))
        epoch_len = (len(self.train_dataloader)
                     if isinstance(self.train_loop, EpochBasedTrainLoop) else 0)
        with on_distinct_groups(schedulers), warnings.catch_warnings():
            warnings.simplefilter('ignore', UserWarning)  # "scheduler.step() before optimizer"
            replay(schedulers, self.iter, epoch_len)


def replay(schedulers: List[_ParamScheduler], iters: int, epoch_len: int) -> None:
    """The scheduler steps of ``iters`` training iterations (mmengine's ``ParamSchedulerHook``:
    iteration-based schedulers after every iteration, epoch-based ones after every
    ``epoch_len`` iterations; 0: none)."""
    per_iter = [s for s in schedulers if not s.by_epoch]
    per_epoch = [s for s in schedulers if s.by_epoch]
    for i in range(iters):
        for s in per_iter:
            s.step()
        if epoch_len and (i + 1) % epoch_len == 0:
            for s in per_epoch:
                s.step()


class _Shadow:
    """An optimizer stand-in holding copies of groups (what schedulers read and write)."""

    def __init__(self, groups: List[dict]):
        self.param_groups = groups
        self._global_step = 0
        self.step = _counted_noop


def _counted_noop():
    return None


_counted_noop._with_counter = True


class on_distinct_groups:
    """Context: the schedulers step one copy of each distinct parameter group (mmengine's
    constructors make one group per parameter: hundreds of equal ones), then every group gets
    its copy's values. Groups equal in every hyper-parameter follow the same schedule."""

    def __init__(self, schedulers: List[_ParamScheduler]):
        self.schedulers = schedulers

    def __enter__(self):
        self.saved, self.shadows = [], {}
        for s in self.schedulers:
            opt = s.optimizer
            if id(opt) not in self.shadows:
                self.shadows[id(opt)] = (opt, *self._distinct(opt.param_groups))
            _, reps, _, shadow = self.shadows[id(opt)]
            self.saved.append((s, opt, s.base_values))
            s.optimizer, s.base_values = shadow, [s.base_values[r] for r in reps]
        return self

    @staticmethod
    def _distinct(groups: List[dict]):
        """(representative index per class, class of every group, shadow optimizer)."""
        keys, reps, classes = {}, [], []
        for i, g in enumerate(groups):
            key = repr(sorted((k, v) for k, v in g.items() if k not in ('params', 'param_name')))
            if key not in keys:
                keys[key] = len(reps)
                reps.append(i)
            classes.append(keys[key])
        shadow = _Shadow([copy.deepcopy({k: v for k, v in groups[r].items() if k != 'params'})
                          for r in reps])
        return reps, classes, shadow

    def __exit__(self, *exc):
        for s, opt, base_values in self.saved:
            classes = self.shadows[id(opt)][2]
            s.optimizer, s.base_values = opt, base_values
            if hasattr(s, '_last_value'):
                s._last_value = [s._last_value[c] for c in classes]
        names = {s.param_name for s in self.schedulers}
        for opt, _, classes, shadow in self.shadows.values():
            for group, c in zip(opt.param_groups, classes):
                group.update({n: shadow.param_groups[c][n] for n in names
                              if n in shadow.param_groups[c]})
        return False

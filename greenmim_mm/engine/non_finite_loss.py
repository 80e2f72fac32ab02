"""Stop training at the first non-finite loss, and never checkpoint non-finite weights."""
import math
from typing import Optional, Union

import torch
from mmengine.hooks import Hook

from greenmim_mm.registry import HOOKS

from .lazy_runtime_info import logging_iteration


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Raise :class:`NonFiniteLossError` when a training iteration's loss was NaN or infinite,
    naming that iteration, its epoch and batch, and the non-finite loss terms with their values.

    No read of the device and no host-to-device copy per iteration: every iteration folds
    ``isfinite`` of each loss term into a device-resident record (first bad iteration, batch
    index and term values; built with device ops and scalar fills only); the host reads it on
    its check iterations, before every checkpoint is written (``before_save_checkpoint``), and
    at the end of every epoch and of training. So a NaN loss stops the run at most one check
    interval later and before any checkpoint of an iteration at or after it (mmdet's
    ``CheckInvalidLossHook`` checks every 50 and only asserts).

    Check iterations: every ``interval`` iterations (an int; ``interval=1`` checks every
    iteration, one sync per iteration), or ``interval='logger'``: the ``LoggerHook``'s logging
    iterations (:func:`~greenmim_mm.engine.lazy_runtime_info.logging_iteration`), where
    ``LazyRuntimeInfoHook`` reads the losses anyway: the device has then just been waited for,
    so this hook's read adds no wait of its own (the pre-training configs).

    Priority ``ABOVE_NORMAL``: it runs before ``LoggerHook`` (``BELOW_NORMAL``) and the
    checkpoint hook (``VERY_LOW``, whose ``before_save_checkpoint`` also runs after this one's);
    the process exits with the error. Loss values that are Python numbers are checked at once.

    Args:
        interval (int or 'logger'): when the device record is read (default 10).
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, interval: Union[int, str] = 10):
        if interval != 'logger' and (not isinstance(interval, int) or interval < 1):
            raise ValueError(f"NonFiniteLossHook interval must be a positive int or 'logger'; "
                             f'got {interval!r}')
        self.interval = interval
        self._record = None  # device (2,) int64: first bad (iteration, batch), or (-1, -1)
        self._values = {}    # term -> device value at the first bad iteration

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        terms = {k: v for k, v in (outputs or {}).items() if 'loss' in k}
        plain = {k: float(v) for k, v in terms.items() if isinstance(v, (int, float))}
        if any(not math.isfinite(v) for v in plain.values()):
            self._raise(runner, runner.iter + 1, batch_idx + 1,
                        {k: v for k, v in plain.items() if not math.isfinite(v)})
        tensors = {k: v.detach().float().mean() for k, v in terms.items()
                   if isinstance(v, torch.Tensor) and v.numel()}
        if tensors:
            self._fold(runner.iter + 1, batch_idx + 1, tensors)
        if self._check_iteration(runner, batch_idx):
            self.check(runner)

    def _check_iteration(self, runner, batch_idx: int) -> bool:
        if self.interval == 'logger':
            return logging_iteration(runner, batch_idx)
        return (runner.iter + 1) % self.interval == 0

    def _fold(self, iteration: int, batch: int, tensors: dict) -> None:
        """Record the first non-finite iteration on the device: no host read, no copy (the
        iteration and batch numbers enter as scalar fills)."""
        device = next(iter(tensors.values())).device
        if self._record is None or self._record.device != device:
            self._record = torch.full((2, ), -1, dtype=torch.int64, device=device)
        bad = torch.stack([torch.isfinite(v).logical_not() for v in tensors.values()]).any()
        first = bad & (self._record[0] < 0)
        here = torch.full_like(self._record, batch)
        here[0] = iteration
        self._record = torch.where(first, here, self._record)
        for k, v in tensors.items():
            old = self._values.get(k)
            self._values[k] = torch.where(first, v, v.new_zeros(()) if old is None else old)

    def check(self, runner) -> None:
        """Read the device record (one sync) and raise if a non-finite loss was recorded."""
        if self._record is None:
            return
        iteration, batch = (int(v) for v in self._record.tolist())
        if iteration >= 0:
            values = {k: float(v) for k, v in self._values.items()}
            self._raise(runner, iteration, batch,
                        {k: v for k, v in values.items() if not math.isfinite(v)})

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        self.check(runner)

    def after_train_epoch(self, runner) -> None:
        self.check(runner)

    def after_train(self, runner) -> None:
        self.check(runner)

    @staticmethod
    def _raise(runner, iteration: int, batch: int, bad: dict) -> None:
        terms = ', '.join(f'{k}={v}' for k, v in bad.items())
        raise NonFiniteLossError(
            f'Non-finite loss at iteration {iteration} (epoch {runner.epoch + 1}, batch {batch} '
            f'of the epoch): {terms}. Training stopped (found at iteration {runner.iter + 1}); no '
            f'checkpoint of this or a later iteration was written (checkpoints in '
            f'{runner.work_dir} are older).')


class NonFiniteWeightsError(NonFiniteLossError):
    """A checkpoint about to be written holds NaN or infinite model weights."""


def check_finite_weights(state_dict: dict, iteration: int, work_dir: str) -> None:
    """Raise :class:`NonFiniteWeightsError` if a floating tensor of ``state_dict`` holds NaN or
    infinity, naming the iteration, the count and the first tensors.

    A loss can be finite while the update it drives overflows the weights (e.g. a too-high lr):
    :class:`NonFiniteLossHook` sees the *next* loss only, so the checkpoint hook calls this on
    the model state before writing (``SafeCheckpointHook.before_save_checkpoint``).
    """
    bad = [k for k, v in state_dict.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteWeightsError(
            f'Non-finite weights after iteration {iteration}: {len(bad)} of {len(state_dict)} '
            f'tensors of the model state hold NaN or inf (first: {", ".join(bad[:3])}). Training '
            f'stopped; this checkpoint was not written (checkpoints in {work_dir} are older).')

"""Stop training at the first non-finite loss, and never checkpoint non-finite weights."""
import math
from typing import Optional

import torch
from mmengine.hooks import Hook

from greenmim_mm.registry import HOOKS


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Raise :class:`NonFiniteLossError` after the first training iteration whose loss is NaN or
    infinite, naming the iteration, the epoch and the non-finite loss terms.

    Checks every iteration (mmdet's ``CheckInvalidLossHook`` checks every 50 and only asserts).
    Priority ``ABOVE_NORMAL``: it runs before ``LoggerHook`` (``BELOW_NORMAL``) and
    ``CheckpointHook`` (``VERY_LOW``), so no checkpoint of that iteration (or any later one) is
    written; the process exits with the error. On fp16 AMP, the loss scaler already skips steps
    whose *gradients* overflow; a loss that is itself non-finite is what this catches.
    """

    priority = 'ABOVE_NORMAL'

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        if not outputs:
            return
        bad = {k: _as_float(v) for k, v in outputs.items() if 'loss' in k}
        bad = {k: v for k, v in bad.items() if v is not None and not math.isfinite(v)}
        if bad:
            terms = ', '.join(f'{k}={v}' for k, v in bad.items())
            raise NonFiniteLossError(
                f'Non-finite loss at iteration {runner.iter + 1} (epoch {runner.epoch + 1}, '
                f'batch {batch_idx + 1} of the epoch): {terms}. Training stopped; no checkpoint '
                f'of this iteration was written (checkpoints in {runner.work_dir} are older).')


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


def _as_float(value) -> Optional[float]:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean()) if value.numel() else None
    if isinstance(value, (int, float)):
        return float(value)
    return None

"""mmengine's ``RuntimeInfoHook`` without a device read per iteration (``LazyRuntimeInfoHook``).

mmengine 0.10.7's ``RuntimeInfoHook.after_train_iter`` pushes every entry of the train step's
``outputs`` (the model's ``log_vars``: device tensors) into the ``MessageHub`` with
``update_scalar``, which calls ``.item()``: one host-device synchronisation per loss term per
iteration, which stalls the host until the GPU has finished the step.

``LazyRuntimeInfoHook`` keeps detached device copies of every iteration's tensors and pushes
them, in iteration order and with the values ``.item()`` would give, only when something reads the
message hub's training scalars (:func:`logging_iteration`, validation, checkpoint saves, epoch
and training end), in one read per (device, dtype) group (``torch.stack(...).tolist()``). The
hub's histories, and so the logged (smoothed) values and the checkpoints' ``message_hub``, are
identical to mmengine's (tested).
"""
from collections import defaultdict
from typing import Dict, List, Optional

import torch
from mmengine.hooks import LoggerHook, RuntimeInfoHook
from mmengine.utils import apply_to

from greenmim_mm.registry import HOOKS


def logging_iteration(runner, batch_idx: int) -> bool:
    """Whether the runner's ``LoggerHook`` reads the training scalars after this iteration:
    its own ``after_train_iter`` condition (every ``interval`` inner iterations, or the last
    iteration of the epoch). True at every iteration when the runner has no ``LoggerHook``."""
    logger = next((h for h in runner.hooks if isinstance(h, LoggerHook)), None)
    if logger is None:
        return True
    return bool(logger.every_n_inner_iters(batch_idx, logger.interval)
                or logger.end_of_epoch(runner.train_dataloader, batch_idx))


def read_scalars(pending: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """The Python values of a list of ``outputs`` dicts: every one-element tensor as its
    ``.item()`` (same value and Python type), with one ``tolist()`` per (device, dtype) group;
    other values unchanged."""
    groups = defaultdict(list)  # (device, dtype) -> [(iteration index, key, tensor)]
    for i, outputs in enumerate(pending):
        for key, value in outputs.items():
            if isinstance(value, torch.Tensor):
                groups[(value.device, value.dtype)].append((i, key, value))
    values = [dict(outputs) for outputs in pending]
    for entries in groups.values():
        read = torch.stack([t.reshape(()) for _, _, t in entries]).tolist()
        for (i, key, _), value in zip(entries, read):
            values[i][key] = value
    return values


@HOOKS.register_module()
class LazyRuntimeInfoHook(RuntimeInfoHook):
    """``RuntimeInfoHook`` (epoch, iter, lr, max_iters, ...: unchanged) whose training
    ``outputs`` reach the ``MessageHub`` only when read (see the module docstring): at the
    ``LoggerHook``'s logging iterations (:func:`logging_iteration`), before validation, before a
    checkpoint is saved (its ``message_hub`` entry is then rebuilt), and at the end of every
    epoch and of training. Between those no device value is read.

    Use as ``default_hooks.runtime_info = dict(type='LazyRuntimeInfoHook')``. A hook that reads
    ``train/*`` scalars of the message hub at other iterations sees them up to the last flush.

    Raises:
        ValueError: an ``outputs`` tensor has more than one element (mmengine asserts the
            same in ``update_scalar``), naming the key.
    """

    def __init__(self):
        self._pending: List[Dict[str, object]] = []  # outputs of the iterations not pushed yet

    def before_train(self, runner) -> None:
        self._pending = []
        super().before_train(runner)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        if outputs is not None:
            self._pending.append({k: self._keep(k, v) for k, v in outputs.items()})
        if logging_iteration(runner, batch_idx):
            self.flush(runner)

    @staticmethod
    def _keep(key: str, value):
        if not isinstance(value, torch.Tensor):
            return value
        if value.numel() != 1:
            raise ValueError(f'train step output {key!r} has {value.numel()} elements; the '
                             'message hub logs scalars (one element) only')
        # a copy (one device kernel, no sync): a step compiled with CUDA graphs
        # (mode='reduce-overhead', 'max-autotune' on a GPU) reuses its output memory on the
        # next replay, before this value is read
        return value.detach().clone()

    def flush(self, runner) -> None:
        """Push every pending iteration's outputs into the message hub (one read per
        (device, dtype) group), in iteration order."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        for outputs in read_scalars(pending):
            for key, value in outputs.items():
                runner.message_hub.update_scalar(f'train/{key}', value)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """mmengine's ``Runner.save_checkpoint`` takes the hub's state before this hook runs:
        flush and take it again (as the runner does, tensors on the CPU)."""
        if self._pending:
            self.flush(runner)
            checkpoint['message_hub'] = apply_to(runner.message_hub.state_dict(),
                                                 lambda x: hasattr(x, 'cpu'), lambda x: x.cpu())

    def before_val(self, runner) -> None:
        self.flush(runner)
        super().before_val(runner)

    def after_train_epoch(self, runner) -> None:
        self.flush(runner)

    def after_train(self, runner) -> None:
        self.flush(runner)
        super().after_train(runner)

"""``SafeCheckpointHook``: mmengine's ``CheckpointHook`` with atomic saving and plain checkpoints.

mmengine 0.10.7's ``CheckpointHook`` deletes the oldest checkpoint (``max_keep_ckpts``) and the
previous best one *before* writing their successor, writes files in place and points
``last_checkpoint`` at the new file before it is complete; a kill during a save can leave only a
partial file and a ``last_checkpoint`` naming a deleted one. This subclass

* writes every checkpoint through
  :class:`greenmim_mm.checkpoint.atomic_files.AtomicLocalBackend` (temporary file in the same
  directory, flushed, ``fsync``-ed, renamed into place), then rewrites
  ``last_checkpoint`` atomically, and only then removes checkpoints that fell out of
  ``max_keep_ckpts`` or were the previous best;
* stores the checkpoint in the plain format (:func:`greenmim_mm.checkpoint.plain_format.to_plain` in
  ``before_save_checkpoint``), which ``torch.load(path, weights_only=True)`` reads with no
  allow-list, and restores it in ``after_load_checkpoint`` (``Runner.load_checkpoint`` calls it
  before ``Runner.resume`` reads the message hub, meta and optimizer);
* holds the work dir's lock (:mod:`.work_dir_lock`) from ``before_run`` to ``after_run``: one live
  run per work dir, a second one refuses with ``WorkDirBusyError`` naming the first's pid/host;
  a local ``out_dir`` elsewhere is locked as well, from ``before_train``;
* removes, when training starts, the temporary files a killed save left behind (greenmim_mm's own
  ``.*.greenmim_mm-tmp-<pid>-*.partial`` names of dead writers only,
  :func:`~greenmim_mm.checkpoint.atomic_files.stale_partial_files`);
* loads ``load_from`` / ``--resume`` checkpoints strictly (``after_load_checkpoint``, before any
  training): weights missing from the file, weights the model lacks or of another shape (another
  architecture) stop the run with one :class:`CheckpointMismatchError` naming the keys;
  ``strict_load=False`` (``tools/train.py --partial-load``) loads the tensors that fit and logs
  the rest as a warning;
* refuses to write a checkpoint whose model weights hold NaN or inf
  (:func:`~greenmim_mm.engine.non_finite_loss.check_finite_weights`), whose parameters overflow
  the training dtype (AMP: fp16 / bf16, whose casts turn them into inf) or whose last training
  iteration had a non-finite loss: the run stops with ``NonFiniteWeightsError`` naming the lr;
* makes a checkpoint "last good" (``last_checkpoint`` names it; checkpoints beyond
  ``max_keep_ckpts`` removed) only after the first training iteration *from* its weights had a
  finite loss (or when training ends): weights that are finite but explode the next forward (an
  lr of 1e38) never become the checkpoint ``--resume`` picks;
* refuses, before the first step, learning rates that the parameters' dtype cannot hold (an
  AdamW lr of 1e45 would fail inside torch with "value cannot be converted to type float without
  overflow").

The checks at save time and on the iteration after a save synchronise with the device (one
reduction over the weights, one loss read); every other iteration stores references only.

Everything else (intervals, ``save_best``, ``max_keep_ckpts``, ``filename_tmpl``...) is mmengine's.
Checkpoints to a remote ``out_dir`` (``s3://``...) keep mmengine's backend and are not atomic.
"""
import os
import os.path as osp
from typing import Optional

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.model import is_model_wrapper

from ..checkpoint.plain_format import from_plain, to_plain
from ..checkpoint.loading import CheckpointLoadError
from ..checkpoint.atomic_files import ATOMIC_BACKEND, atomic_write_text, stale_partial_files
from ..registry import HOOKS
from .non_finite_loss import NonFiniteWeightsError, check_finite_weights
from .work_dir_lock import lock_work_dir, unlock_work_dir


class CheckpointMismatchError(CheckpointLoadError):
    """A ``load_from`` / ``--resume`` checkpoint whose weights do not fit the model."""


class LearningRateOverflowError(NonFiniteWeightsError):
    """A learning rate the parameters' dtype cannot represent."""


class _DeferredRemovals:
    """A file backend proxy that records ``remove``/``rmtree`` instead of doing them."""

    def __init__(self, backend):
        self._backend, self.paths = backend, []

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def remove(self, path):
        self.paths.append(path)

    def rmtree(self, path):
        self.paths.append(path)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) saving atomically, removing old checkpoints
    only after their successor is complete, in greenmim_mm's plain checkpoint format."""

    def __init__(self, *args, strict_load: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.strict_load = strict_load
        local = self.out_dir is None or '://' not in str(self.out_dir)
        if local and self.backend_args is None and self.file_client_args is None:
            self.backend_args = dict(backend=ATOMIC_BACKEND)
        self._last_outputs = None  # the latest training iteration's outputs (references only)
        self._pending = None  # (checkpoint path, stale paths): saved, not yet "last good"
        self._locked_out_dir = None  # an out_dir outside the work dir, locked by this run

    # ------------------------------------------------------------------ one run per work dir
    def before_run(self, runner) -> None:
        if is_main_process():
            lock_work_dir(runner.work_dir)
        super().before_run(runner)

    def after_run(self, runner) -> None:
        super().after_run(runner)
        if is_main_process():
            unlock_work_dir(runner.work_dir)
            if self._locked_out_dir:
                unlock_work_dir(self._locked_out_dir)

    def _lock_out_dir(self, runner) -> None:
        """Lock a local ``out_dir`` outside the work dir too (mmengine's
        ``<out_dir>/<work dir's name>``): two runs with other work dirs but one ``out_dir``
        would overwrite each other's checkpoints."""
        if not is_main_process() or '://' in str(self.out_dir) or \
                osp.realpath(self.out_dir) == osp.realpath(runner.work_dir):
            return
        lock_work_dir(self.out_dir)
        self._locked_out_dir = self.out_dir

    # ------------------------------------------------------------------ plain format, checks
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        iteration = checkpoint.get('meta', {}).get('iter', runner.iter)  # iterations completed
        state = checkpoint.get('state_dict', {})
        check_finite_weights(state, iteration, runner.work_dir)
        check_weights_in_range(state, _parameter_names(runner), training_dtype(runner),
                               iteration, learning_rate_text(runner))
        check_finite_outputs(self._last_outputs, iteration, learning_rate_text(runner))
        for key in list(checkpoint):
            checkpoint[key] = to_plain(checkpoint[key], f"checkpoint['{key}']")

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in list(checkpoint):
            checkpoint[key] = from_plain(checkpoint[key])
        self._check_fits_model(runner, checkpoint)

    def _check_fits_model(self, runner, checkpoint: dict) -> None:
        """Refuse (strict) or log (``strict_load=False``) a checkpoint that does not fit."""
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        name = _checkpoint_name(runner)
        problems = load_and_describe_misfit(model, checkpoint, name)
        if not problems:
            return
        if self.strict_load:
            raise CheckpointMismatchError(
                f'{name} does not fit the model ({type(model).__name__}): {problems}. Use a '
                'checkpoint of this config\'s architecture, or --partial-load '
                '(default_hooks.checkpoint.strict_load=False) to load only the tensors that fit.')
        runner.logger.warning(f'partial load (strict_load=False) from {name}: {problems}')

    def before_train(self, runner) -> None:
        super().before_train(runner)
        self._lock_out_dir(runner)
        check_learning_rates(runner)
        if is_main_process() and '://' not in str(self.out_dir):
            for path in stale_partial_files(self.out_dir):
                runner.logger.warning(f'removing {path}, left by a save that was interrupted')
                os.remove(path)

    # ------------------------------------------------------------------ "last good" checkpoint
    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._last_outputs = outputs
        if self._pending is not None:  # the first iteration from the saved weights
            check_finite_outputs(outputs, runner.iter + 1, learning_rate_text(runner),
                                 after=self._pending[0])
            self._promote(runner)
        super().after_train_iter(runner, batch_idx, data_batch, outputs)

    def after_train(self, runner) -> None:
        super().after_train(runner)
        if self._pending is not None:
            self._promote(runner)

    def _promote(self, runner) -> None:
        """Point ``last_checkpoint`` at the pending checkpoint, then remove the ones it
        replaces (``max_keep_ckpts``)."""
        path, stale = self._pending
        self._pending = None
        if not is_main_process():
            return
        atomic_write_text(osp.join(runner.work_dir, 'last_checkpoint'), path)
        for old in stale:
            self._remove(old)

    # ------------------------------------------------------------------ atomic saving
    def _save_checkpoint_with_step(self, runner, step, meta):
        if self._pending is not None:  # saved twice without an iteration in between
            self._promote(runner)
        stale = self._advance_kept_steps(runner, step)
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir, ckpt_filename, self.file_client_args,
            save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
            meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        self._pending = (self.last_ckpt, [
            self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            for old in stale])

    def _advance_kept_steps(self, runner, step) -> list:
        """mmengine's ``max_keep_ckpts`` bookkeeping; returns the steps whose files to remove
        (once the new checkpoint is saved) instead of removing them now."""
        if self.max_keep_ckpts <= 0 or (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            return []
        stale = []
        if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
            stale.append(self.keep_ckpt_ids.popleft())
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        return stale

    def _save_best_checkpoint(self, runner, metrics) -> None:
        """mmengine's, with the previous best checkpoint removed after the new one is saved."""
        backend = self.file_backend
        deferred = _DeferredRemovals(backend)
        self.file_backend = deferred
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        current = {self.last_ckpt, getattr(self, 'best_ckpt_path', None),
                   *getattr(self, 'best_ckpt_path_dict', {}).values()}
        for path in deferred.paths:
            if path not in current:
                self._remove(path)

    def _remove(self, path) -> None:
        if not is_main_process():
            return
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):  # deepspeed saves directories
            self.file_backend.rmtree(path)


# ---------------------------------------------------------------------------- checks
def load_and_describe_misfit(model: torch.nn.Module, checkpoint, name: str) -> str:
    """Load ``checkpoint``'s weights (its ``state_dict``, or itself; ``module.`` stripped) into
    ``model`` as ``load_state_dict`` does (the modules' own ``_load_from_state_dict``, so older
    layouts they convert still fit), copying every tensor that fits; return one line naming the
    missing, unexpected and mis-shaped keys ('' when everything fits).

    Raises:
        CheckpointMismatchError: ``checkpoint`` (from file ``name``) holds no state dict.
    """
    from ..models.backbones.pretrained import (PretrainedLoadError, describe_problems,
                                               load_collecting, select_state_dict)
    try:
        state_dict = select_state_dict(checkpoint, name, None)
    except PretrainedLoadError as err:
        raise CheckpointMismatchError(str(err)) from None
    missing, unexpected, mismatched = load_collecting(model, state_dict)
    missing = [k for k in missing if not k.endswith('num_batches_tracked')]  # as mmengine's
    return describe_problems(missing, mismatched, unexpected)


def training_dtype(runner) -> torch.dtype:
    """The dtype the forward casts parameters to: AMP's ``cast_dtype`` (autocast's default,
    fp16 on CUDA and bf16 on the CPU, when unset), else float32."""
    from mmengine.optim import AmpOptimWrapper
    wrappers = getattr(runner.optim_wrapper, 'values', lambda: [runner.optim_wrapper])()
    for wrapper in wrappers:
        if isinstance(wrapper, AmpOptimWrapper):
            dtype = getattr(wrapper, 'cast_dtype', None)
            return dtype or (torch.float16 if torch.cuda.is_available() else torch.bfloat16)
    return torch.float32


def check_weights_in_range(state_dict: dict, names: Optional[set], dtype: torch.dtype,
                           iteration: int, lr: str) -> None:
    """Raise :class:`NonFiniteWeightsError` if a finite floating parameter of ``state_dict``
    (``names``; all floating tensors when None) rounds to inf when cast to ``dtype`` (the
    forward's AMP cast: fp16 beyond 65504 + 16, bf16 beyond 3.3895e38 + 6.6e35). One device
    synchronisation (the per-tensor largest magnitudes).

    Raises:
        NonFiniteWeightsError: naming the tensors, their largest magnitude and ``lr``.
    """
    keys = [k for k, v in state_dict.items() if isinstance(v, torch.Tensor)
            and v.is_floating_point() and v.numel() and (names is None or k in names)]
    if not keys:
        return
    peaks = torch.stack([state_dict[k].detach().abs().amax().float() for k in keys]).cpu()
    overflow = torch.isfinite(peaks) & torch.isinf(peaks.to(dtype))
    over = [(k, float(p)) for k, p, o in zip(keys, peaks, overflow.tolist()) if o]
    if over:
        shown = ', '.join(f'{k} (max |w| {p:.5g})' for k, p in over[:3])
        raise NonFiniteWeightsError(
            f'Weights overflow the training dtype {dtype} (largest finite '
            f'{torch.finfo(dtype).max:.5g}) after iteration {iteration}: {len(over)} tensors, '
            f'first {shown}. The optimizer step diverged: lower the learning rate ({lr}). '
            'Training stopped; this checkpoint was not written.')


def check_finite_outputs(outputs: Optional[dict], iteration: int, lr: str,
                         after: Optional[str] = None) -> None:
    """Raise :class:`NonFiniteWeightsError` if a loss term of a training iteration's
    ``outputs`` is NaN or infinite (one synchronisation; called at saves and on the iteration
    after one, not per step). ``after``: the checkpoint the weights of that iteration came from
    (then not made "last good")."""
    if not outputs:
        return
    losses = {k: v for k, v in outputs.items()
              if 'loss' in k and isinstance(v, torch.Tensor) and v.numel()}
    if not losses:
        return
    finite = torch.stack([torch.isfinite(v.detach()).all() for v in losses.values()]).cpu()
    bad = [k for k, ok in zip(losses, finite.tolist()) if not ok]
    if not bad:
        return
    where = (f'the first iteration from the weights of {after} ({after} is kept but not '
             'recorded in last_checkpoint)' if after else 'the last iteration before a save')
    raise NonFiniteWeightsError(
        f'Non-finite loss ({", ".join(bad)}) at iteration {iteration}, {where}: the optimizer '
        f'step diverged; lower the learning rate ({lr}). Training stopped.')


def check_learning_rates(runner) -> None:
    """Raise :class:`LearningRateOverflowError` if a parameter group's lr is not a finite value
    of its parameters' dtype (torch's optimizers would fail mid-step, e.g. AdamW at lr 1e45:
    "value cannot be converted to type float without overflow")."""
    wrappers = getattr(runner.optim_wrapper, 'values', lambda: [runner.optim_wrapper])()
    for wrapper in wrappers:
        for index, group in enumerate(wrapper.optimizer.param_groups):
            lr = group.get('lr')
            dtypes = {p.dtype for p in group['params'] if p.is_floating_point()} or {torch.float32}
            limit = min(torch.finfo(d).max for d in dtypes)
            if isinstance(lr, torch.Tensor):
                lr = float(lr)
            if lr is not None and not abs(lr) <= limit:
                raise LearningRateOverflowError(
                    f'learning rate {lr:g} of parameter group {index} is not a finite '
                    f'{min(dtypes, key=lambda d: torch.finfo(d).max)} value (largest '
                    f'{limit:.5g}): the optimizer step would overflow. Lower optim_wrapper.'
                    'optimizer.lr.')


def learning_rate_text(runner) -> str:
    """'lr 1e+38' (or 'lr 0.1, 0.01' for several groups): the current learning rates."""
    try:
        lrs = runner.optim_wrapper.get_lr()
    except Exception:  # no optimizer (e.g. saving outside training)
        return 'lr unknown'
    values = sorted({float(v) for vs in lrs.values() for v in vs})
    return 'lr ' + ', '.join(f'{v:g}' for v in values[:4])


def _parameter_names(runner) -> set:
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    return {name for name, _ in model.named_parameters()}


def _checkpoint_name(runner) -> str:
    """The file ``load_or_resume`` reads: ``load_from``, else (auto-resume) the one
    ``last_checkpoint`` names."""
    if runner._load_from:
        return str(runner._load_from)
    from mmengine.runner import find_latest_checkpoint
    return find_latest_checkpoint(runner.work_dir) or 'the checkpoint'

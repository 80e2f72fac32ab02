"""``SafeCheckpointHook``: mmengine's ``CheckpointHook`` with atomic saving and plain checkpoints.

mmengine 0.10.7's ``CheckpointHook`` deletes the oldest checkpoint (``max_keep_ckpts``) and the
previous best one *before* writing their successor, writes files in place and points
``last_checkpoint`` at the new file before it is complete; a kill during a save can leave only a
partial file and a ``last_checkpoint`` naming a deleted one. This subclass

* writes every checkpoint through :class:`greenmim_mm.fileio.AtomicLocalBackend` (temporary file
  in the same directory, flushed, ``fsync``-ed, renamed into place), then rewrites
  ``last_checkpoint`` atomically, and only then removes checkpoints that fell out of
  ``max_keep_ckpts`` or were the previous best;
* stores the checkpoint in the plain format (:func:`greenmim_mm.checkpoint_format.to_plain` in
  ``before_save_checkpoint``), which ``torch.load(path, weights_only=True)`` reads with no
  allow-list, and restores it in ``after_load_checkpoint`` (``Runner.load_checkpoint`` calls it
  before ``Runner.resume`` reads the message hub, meta and optimizer);
* removes the temporary files a killed save left behind when training starts;
* refuses to write a checkpoint whose model weights hold NaN or inf
  (:func:`~greenmim_mm.engine.non_finite_loss.check_finite_weights`): the run stops with
  ``NonFiniteWeightsError`` and the older checkpoints stay.

Everything else (intervals, ``save_best``, ``max_keep_ckpts``, ``filename_tmpl``...) is mmengine's.
Checkpoints to a remote ``out_dir`` (``s3://``...) keep mmengine's backend and are not atomic.
"""
import os
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook

from ..checkpoint_format import from_plain, to_plain
from ..fileio import ATOMIC_BACKEND, atomic_write_text, partial_files
from ..registry import HOOKS
from .non_finite_loss import check_finite_weights


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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        local = self.out_dir is None or '://' not in str(self.out_dir)
        if local and self.backend_args is None and self.file_client_args is None:
            self.backend_args = dict(backend=ATOMIC_BACKEND)

    # ------------------------------------------------------------------ plain format
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        iteration = checkpoint.get('meta', {}).get('iter', runner.iter)  # iterations completed
        check_finite_weights(checkpoint.get('state_dict', {}), iteration, runner.work_dir)
        for key in list(checkpoint):
            checkpoint[key] = to_plain(checkpoint[key], f"checkpoint['{key}']")

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in list(checkpoint):
            checkpoint[key] = from_plain(checkpoint[key])

    # ------------------------------------------------------------------ atomic saving
    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process() and '://' not in str(self.out_dir):
            for path in partial_files(self.out_dir):
                runner.logger.warning(f'removing {path}, left by a save that was interrupted')
                os.remove(path)

    def _save_checkpoint_with_step(self, runner, step, meta):
        stale = self._advance_kept_steps(runner, step)
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir, ckpt_filename, self.file_client_args,
            save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
            meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        atomic_write_text(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old in stale:
            self._remove(self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old)))

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

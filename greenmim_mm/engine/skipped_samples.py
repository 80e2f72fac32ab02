"""Count the training samples replaced because they could not be loaded; stop past a limit."""
from typing import List, Optional

from mmengine.hooks import Hook

from greenmim_mm.datasets.seeded import SKIPPED_KEY
from greenmim_mm.registry import HOOKS


class TooManyBadSamplesError(RuntimeError):
    """More than the allowed fraction of an epoch's samples could not be loaded."""


@HOOKS.register_module()
class SkippedSamplesHook(Hook):
    """Per epoch and rank, collect the files a ``SeededSamplesMixin`` dataset skipped (they
    travel in the replacement samples' metainfo ``skipped_samples``, so this works for any
    ``num_workers``), log each file once when first seen and the count at the end of the epoch,
    and raise :class:`TooManyBadSamplesError` as soon as the skips exceed ``max_fraction`` of
    the epoch's samples on this rank.

    Args:
        max_fraction (float): allowed fraction of skipped samples per epoch, in [0, 1].
            Default 0.01 (ImageNet-1k holds a handful of bad files among 1.28 M).
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, max_fraction: float = 0.01):
        if not 0.0 <= float(max_fraction) <= 1.0:
            raise ValueError(f'max_fraction must be in [0, 1]; got {max_fraction!r}')
        self.max_fraction = float(max_fraction)
        self.skipped: List[str] = []

    def before_train_epoch(self, runner) -> None:
        self.skipped = []

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        new = skipped_in_batch(data_batch)
        for name in new:
            if name not in self.skipped:
                runner.logger.warning(f'Skipped unreadable training sample {name} '
                                      f'(replaced by another sample of the data set)')
        self.skipped.extend(new)
        limit = self.max_fraction * epoch_samples(runner)
        if len(self.skipped) > limit:
            raise TooManyBadSamplesError(
                f'{len(self.skipped)} training samples could not be loaded in epoch '
                f'{runner.epoch + 1} (more than max_fraction={self.max_fraction} of '
                f'{epoch_samples(runner)}): {sorted(set(self.skipped))[:20]}')

    def after_train_epoch(self, runner) -> None:
        if self.skipped:
            files = sorted(set(self.skipped))
            runner.logger.warning(
                f'Epoch {runner.epoch + 1}: skipped {len(self.skipped)} unreadable training '
                f'samples ({len(files)} files): {files}')


def skipped_in_batch(data_batch) -> List[str]:
    """The skipped sample names recorded in a collated batch's data samples."""
    samples = data_batch.get('data_samples') if isinstance(data_batch, dict) else None
    names = []
    for sample in samples or []:
        meta = sample.metainfo if hasattr(sample, 'metainfo') else {}
        names.extend(meta.get(SKIPPED_KEY, []))
    return names


def epoch_samples(runner) -> int:
    """Samples per epoch on this rank (the sampler's length)."""
    loader = runner.train_dataloader
    sampler = getattr(loader, 'sampler', None)
    try:
        return len(sampler) if sampler is not None else len(loader.dataset)
    except TypeError:
        return len(loader.dataset)

"""Seeded data loading: every random choice of loading a sample is a function of
(seed, epoch, sample index, rank), whatever ``num_workers`` and ``persistent_workers`` are.

The augmentations of mmcv / mmpretrain / torchvision draw from the process-global RNGs of
``random``, ``numpy`` and ``torch``. In a DataLoader those RNGs live in the worker processes (or in
the main process with ``num_workers=0``) and advance from sample to sample; no checkpoint holds
them, so a resumed run used to augment differently from an uninterrupted one. Here the sampler
(which lives in the main process and gets ``set_epoch``) hands each index together with a seed,
and the dataset re-seeds the three global RNGs from it for exactly the duration of that sample's
pipeline (and any replacement of an unreadable sample), restoring them afterwards.

* :class:`SeededSampler`: mmengine's ``DefaultSampler`` (same order, same ``round_up``) yielding
  :class:`SeededIndex` (index, seed).
* :class:`SeededSamplesMixin`: put before an mmengine ``BaseDataset`` subclass; takes plain ``int``
  indices too (validation, visualisation: no re-seeding).
"""
import contextlib
import random
from typing import Iterator, List, NamedTuple, Optional, Union

import numpy as np
import torch
from mmengine.dataset import DefaultSampler

from greenmim_mm.registry import DATA_SAMPLERS

SKIPPED_KEY = 'skipped_samples'  # metainfo of a replacement sample: the samples it replaces


class SeededIndex(NamedTuple):
    """A sample index with the seed of its loading (what :class:`SeededSampler` yields)."""
    index: int
    seed: int


def sample_seed(seed: int, epoch: int, index: int, rank: int) -> int:
    """A 64-bit seed, a hash of (seed, epoch, sample index, rank) (NumPy's ``SeedSequence``:
    neighbouring epochs / indices / ranks give unrelated streams)."""
    entropy = [int(seed) % 2**64, int(epoch), int(index), int(rank)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


@contextlib.contextmanager
def seeded_rngs(seed: int):
    """Seed ``random``, ``numpy.random`` and torch's CPU RNG from ``seed`` (64-bit) inside the
    block; restore their previous states (``torch.initial_seed()`` included) on exit."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), \
        torch.get_rng_state()
    seed = int(seed) % 2**64
    random.seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


@DATA_SAMPLERS.register_module()
class SeededSampler(DefaultSampler):
    """mmengine's ``DefaultSampler`` whose items are :class:`SeededIndex` (index, seed) with
    ``seed = sample_seed(self.seed, self.epoch, index, rank)``.

    The order of indices is exactly ``DefaultSampler``'s (a function of seed and epoch). The
    dataset must accept seeded indices (:class:`SeededSamplesMixin`); a TypeError says so
    otherwise. Args as ``DefaultSampler``.
    """

    def __init__(self, dataset, *args, **kwargs):
        if not getattr(dataset, 'accepts_seeded_indices', False):
            raise TypeError(
                f'SeededSampler needs a dataset that takes (index, seed) items '
                f'(greenmim_mm.datasets.SeededSamplesMixin, e.g. CheckedCustomDataset); got '
                f'{type(dataset).__name__}. Use DefaultSampler with it instead.')
        super().__init__(dataset, *args, **kwargs)

    def __iter__(self) -> Iterator[SeededIndex]:
        for index in super().__iter__():
            yield SeededIndex(index, sample_seed(self.seed, self.epoch, index, self.rank))


class SeededSamplesMixin:
    """Seeded, deterministic ``__getitem__`` for an mmengine ``BaseDataset`` subclass (put the
    mixin first in the bases).

    * ``dataset[SeededIndex(i, s)]``: runs sample i's pipeline inside :func:`seeded_rngs` (s).
    * ``dataset[i]``: as mmengine's, without re-seeding.
    * A pipeline that returns None (an unreadable image, see ``LoadImageFromFileOrSkip``) in
      training: the sample is replaced by another one drawn from a generator seeded by (s, i)
      (mmengine draws it from the global NumPy RNG), up to ``max_refetch`` times; the replacement's
      data sample carries the skipped samples' paths in its metainfo ``skipped_samples``
      (``SkippedSamplesHook`` counts them in the main process). RuntimeError if every attempt
      fails. In test mode: ValueError naming the file.
    """

    accepts_seeded_indices = True

    def __getitem__(self, idx: Union[int, SeededIndex]) -> dict:
        if not self._fully_initialized:
            self.full_init()
        if isinstance(idx, tuple):
            index, seed = int(idx[0]), int(idx[1])
            with seeded_rngs(seed):
                return self._load_or_replace(index, seed)
        return self._load_or_replace(int(idx), None)

    def sample_name(self, index: int) -> str:
        """The file of sample ``index`` (its ``img_path``), for messages."""
        info = self.get_data_info(index)
        return str(info.get('img_path', f'sample {index}'))

    def _load_or_replace(self, index: int, seed: Optional[int]) -> dict:
        data = self.prepare_data(index)
        if data is not None:
            return data
        skipped = [self.sample_name(index)]
        if self.test_mode:
            raise ValueError(f'{skipped[0]}: the test pipeline returned no data '
                             f'(unreadable image?); test data cannot be skipped')
        entropy = [index] if seed is None else [seed, index]
        rng = np.random.default_rng(np.random.SeedSequence(entropy))
        for _ in range(self.max_refetch):
            other = int(rng.integers(len(self)))
            data = self.prepare_data(other)
            if data is not None:
                _mark_replacement(data, skipped)
                return data
            skipped.append(self.sample_name(other))
        raise RuntimeError(
            f'{len(skipped)} samples in a row could not be loaded (max_refetch='
            f'{self.max_refetch}), e.g. {skipped[:5]}; is the data set readable?')


def _mark_replacement(data: dict, skipped: List[str]) -> None:
    """Record the skipped samples in the replacement's data sample (if it has one)."""
    sample = data.get('data_samples') if isinstance(data, dict) else None
    if sample is not None and hasattr(sample, 'set_metainfo'):
        sample.set_metainfo({SKIPPED_KEY: list(skipped)})

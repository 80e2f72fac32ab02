"""Data loading: seeded sampling and pipelines (exact resume), skipping of unreadable images,
validated annotation files."""
from .annotation_check import check_annotation_file
from .checked_datasets import AnnotationCheckMixin, CheckedCustomDataset, CheckedImageNet
from .loading import LoadImageFromFileOrSkip, unreadable_reason
from .seeded import (SKIPPED_KEY, SeededIndex, SeededSampler, SeededSamplesMixin, sample_seed,
                     seeded_rngs)

__all__ = [
    'check_annotation_file', 'AnnotationCheckMixin', 'CheckedCustomDataset', 'CheckedImageNet',
    'LoadImageFromFileOrSkip', 'unreadable_reason', 'SKIPPED_KEY',
    'SeededIndex', 'SeededSampler', 'SeededSamplesMixin', 'sample_seed', 'seeded_rngs'
]

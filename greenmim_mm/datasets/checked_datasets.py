"""mmpretrain's image datasets with seeded loading, skipping of unreadable images and annotation
files validated at build time (the datasets our configs use)."""
from mmpretrain.datasets import CustomDataset, ImageNet

from greenmim_mm.registry import DATASETS

from .annotation_check import check_annotation_file
from .seeded import SeededSamplesMixin


class AnnotationCheckMixin:
    """``load_data_list`` validates ``ann_file`` first (:func:`check_annotation_file`: the first
    bad line is a ValueError naming the file and the line). ``check_files`` (default True): also
    require every listed image file to exist (one ``stat`` per line; local files only)."""

    def __init__(self, *args, check_files: bool = True, **kwargs):
        self.check_files = check_files
        super().__init__(*args, **kwargs)

    def load_data_list(self):
        if self.ann_file:
            classes = self.CLASSES
            check_annotation_file(self.ann_file, self.img_prefix, self.with_label,
                                  None if classes is None else len(classes), self.check_files)
        return super().load_data_list()


@DATASETS.register_module()
class CheckedCustomDataset(SeededSamplesMixin, AnnotationCheckMixin, CustomDataset):
    """mmpretrain's ``CustomDataset`` (same arguments, plus ``check_files``) with

    * seeded loading (``SeededSamplesMixin``: use with ``SeededSampler``),
    * unreadable images replaced deterministically and reported (with
      ``LoadImageFromFileOrSkip`` in the pipeline and ``SkippedSamplesHook``),
    * the annotation file validated when the dataset is built (``AnnotationCheckMixin``).
    """


@DATASETS.register_module()
class CheckedImageNet(SeededSamplesMixin, AnnotationCheckMixin, ImageNet):
    """mmpretrain's ``ImageNet`` with the same additions as :class:`CheckedCustomDataset`."""

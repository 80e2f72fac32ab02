"""The generated demo data (``tools/make_demo_data.py``: COCO instances, polygon masks) as
detectron2 datasets ``greenmim_demo_train`` / ``greenmim_demo_val``."""
import os.path as osp
from typing import List, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.datasets import register_coco_instances

DEMO_NAMES = ('greenmim_demo_train', 'greenmim_demo_val')


def register_demo_coco(coco_root: str) -> Tuple[str, str]:
    """Register ``<coco_root>/annotations/instances_{train,val}.json`` with images in
    ``<coco_root>/{train,val}/``; re-registers a name that points elsewhere. Returns the names.

    Raises:
        FileNotFoundError: an annotation file is missing (generate the data first).
    """
    for name, split in zip(DEMO_NAMES, ('train', 'val')):
        json_file = osp.join(coco_root, 'annotations', f'instances_{split}.json')
        if not osp.isfile(json_file):
            raise FileNotFoundError(f'{json_file} not found: generate the demo data with '
                                    'python tools/make_demo_data.py')
        if name in DatasetCatalog.list():
            if MetadataCatalog.get(name).get('json_file') == json_file:
                continue
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, json_file, osp.join(coco_root, split))
    return DEMO_NAMES


def demo_dataset_dicts(coco_root: str, split: str) -> List[dict]:
    """The demo split ('train' or 'val') as detectron2 dataset dicts, registering both demo
    datasets first (for LazyConfigs: ``dataloader.train.dataset = L(demo_dataset_dicts)(...)``
    registers at instantiation, so the root can be overridden on the command line). Empty
    images are dropped from 'train' only, as detectron2's loaders do.

    Raises:
        FileNotFoundError: an annotation file is missing (generate the data first).
        ValueError: ``split`` is not 'train' or 'val'.
    """
    if split not in ('train', 'val'):
        raise ValueError(f"split must be 'train' or 'val'; got {split!r}")
    names = register_demo_coco(coco_root)
    return get_detection_dataset_dicts(names[split == 'val'], filter_empty=split == 'train')

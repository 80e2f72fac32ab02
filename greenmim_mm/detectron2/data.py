"""The generated demo data (``tools/make_demo_data.py``: COCO instances, polygon masks) as
detectron2 datasets ``greenmim_demo_train`` / ``greenmim_demo_val``."""
import os.path as osp
from typing import Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
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

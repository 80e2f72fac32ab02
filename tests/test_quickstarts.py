"""The README's quick starts do what they say: pre-training on a plain image folder
(``data_root=DIR data_prefix=''``) and the mmdet config snippet with ``_delete_=True``."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

REPO = Path(__file__).resolve().parents[1]
README = (REPO / 'README.md').read_text()
SWIN_B = REPO / 'configs' / 'pretrain' / 'greenmim_swin-base-w7_8xb256-amp-800e_in1k-224px.py'
NANO = REPO / 'configs' / 'pretrain' / 'greenmim_swin-nano_demo_128px.py'


def folder_options(folder):
    return [f'train_dataloader.dataset.data_root={folder}', "train_dataloader.dataset.data_prefix="]


def test_readme_states_the_folder_options():
    assert ("--cfg-options train_dataloader.dataset.data_root=/data/my_images "
            "train_dataloader.dataset.data_prefix=''") in README


@pytest.fixture(scope='module')
def image_folder(demo_data_factory, tmp_path_factory):
    """A folder of images, some flat, some nested, no annotation file; plus one non-image."""
    demo = Path(demo_data_factory('qs', 2, 1))
    folder = tmp_path_factory.mktemp('my_images')
    images = sorted((demo / 'train').rglob('*.png'))
    for i, image in enumerate(images):
        dest = folder / ('nested' if i % 2 else '.') / f'img_{i}.png'
        dest.parent.mkdir(exist_ok=True)
        shutil.copy(image, dest)
    (folder / 'notes.txt').write_text('not an image')
    return folder, len(images)


def test_own_folder_is_the_dataset_of_the_real_config(image_folder):
    from greenmim_mm.registry import DATASETS
    folder, count = image_folder
    cfg = Config.fromfile(str(SWIN_B))
    cfg.merge_from_dict({'train_dataloader.dataset.data_root': str(folder),
                         'train_dataloader.dataset.data_prefix': ''})
    init_default_scope(cfg.default_scope)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    paths = sorted(dataset.get_data_info(i)['img_path'] for i in range(len(dataset)))
    assert len(paths) == count
    assert paths == sorted(str(p) for p in folder.rglob('*.png'))


def test_own_folder_trains(image_folder, tmp_path):
    folder, _ = image_folder
    run = subprocess.run([sys.executable, str(REPO / 'tools' / 'train.py'), str(NANO),
                          '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                          *folder_options(folder), 'train_cfg.max_epochs=1',
                          'train_dataloader.batch_size=2'],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / 'w' / 'epoch_1.pth').is_file()


def readme_mmdet_snippet() -> str:
    blocks = re.findall(r'```python\n(.*?)```', README, re.S)
    (snippet, ) = [b for b in blocks if '_delete_=True' in b]
    return snippet


def test_readme_mmdet_snippet_builds_a_detector(tmp_path):
    from mmdet.registry import MODELS

    from greenmim_mm.models import GreenSwinTransformer
    path = tmp_path / 'my_config.py'
    path.write_text(readme_mmdet_snippet())
    cfg = Config.fromfile(str(path))
    init_default_scope('mmdet')
    detector = MODELS.build(cfg.model)
    assert type(detector.backbone) is GreenSwinTransformer
    assert cfg.model.backbone.init_cfg.checkpoint == 'backbone.pth'
    with torch.no_grad():
        feats = detector.extract_feat(torch.randn(1, 3, 224, 224))
    # FPN levels at strides 4..32 and the max-pooled P6 (7 -> 4, ceil mode)
    assert [tuple(f.shape[2:]) for f in feats] == [(56, 56), (28, 28), (14, 14), (7, 7), (4, 4)]
    assert all(f.shape[:2] == (1, 256) for f in feats)


def test_without_delete_the_build_names_an_argument_of_the_base_backbone(tmp_path):
    from mmdet.registry import MODELS
    path = tmp_path / 'no_delete.py'
    path.write_text(readme_mmdet_snippet().replace('_delete_=True, ', ''))
    cfg = Config.fromfile(str(path))
    init_default_scope('mmdet')
    with pytest.raises(TypeError, match='depth'):  # ResNet-50's argument, merged in
        MODELS.build(cfg.model)

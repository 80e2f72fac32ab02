"""Our configs under mmpretrain's and mmdet's own train scripts (``mim train mmpretrain|mmdet``).

mmpretrain's ``tools/train.py`` sets ``persistent_workers=True`` in every dataloader whose config
leaves it out, and torch refuses that with ``num_workers=0`` (``ValueError: persistent_workers
option needs num_workers > 0``): every config without workers must say ``persistent_workers=False``.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / 'configs').rglob('*.py')
                 if '_base_' not in p.parts and p.parent.name != 'detectron2')
MIM = Path(sys.executable).with_name('mim')
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


@pytest.mark.parametrize('config', CONFIGS)
def test_persistent_workers_only_with_workers(config):
    cfg = Config.fromfile(str(REPO / config))
    for name in LOADERS:
        loader = cfg.get(name)
        if loader is None:
            continue
        if loader.get('num_workers', 0) == 0:  # mmpretrain's script fills in True when unset
            assert loader.get('persistent_workers') is False, \
                f'{name}: num_workers=0 needs persistent_workers=False stated'


@pytest.fixture(scope='module')
def demo_root(demo_data_factory):
    return Path(demo_data_factory('foreign', 2, 1, det_train=2))


def _mim(args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    return subprocess.run([str(MIM)] + args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


def run_foreign(package, config, options, tmp_path):
    work = tmp_path / 'work'
    run = _mim(['train', package, str(REPO / config), '--work-dir', str(work),
                '--cfg-options'] + options, tmp_path)
    log = run.stdout[-4000:] + run.stderr[-4000:]
    assert run.returncode == 0, log
    assert 'persistent_workers' not in run.stderr, log
    return work, log


@pytest.mark.skipif(not MIM.exists(), reason='openmim not installed')
@pytest.mark.parametrize('config', ['configs/pretrain/greenmim_swin-nano_demo_128px.py',
                                    'configs/finetune/greenswin-nano_demo-cls_128px.py'])
def test_demo_config_trains_under_mmpretrain_train_script(config, demo_root, tmp_path):
    cfg = Config.fromfile(str(REPO / config))
    roots = [f'{k}.dataset.data_root={demo_root}/' for k in LOADERS if cfg.get(k)]
    options = roots + ['train_cfg.max_epochs=1', 'train_dataloader.batch_size=5']
    work, log = run_foreign('mmpretrain', config, options, tmp_path)
    assert (work / 'epoch_1.pth').is_file(), log
    assert 'Iter(train)' in log or 'Epoch(train)' in log


@pytest.mark.skipif(not MIM.exists(), reason='openmim not installed')
def test_detection_demo_trains_under_mmdet_train_script(demo_root, tmp_path):
    coco = demo_root / 'coco'
    options = [f'{k}.dataset.data_root={coco}/' for k in LOADERS] + [
        f'val_evaluator.ann_file={coco}/annotations/instances_val.json',
        f'test_evaluator.ann_file={coco}/annotations/instances_val.json',
        'train_cfg.max_epochs=1', 'train_cfg.val_interval=1', 'train_dataloader.batch_size=1',
        'default_hooks.checkpoint.interval=1', 'model.backbone.init_cfg=None']  # random init
    work, log = run_foreign('mmdet', 'configs/detection/mask-rcnn_greenswin-nano_fpn_demo_128px.py',
                            options, tmp_path)
    assert (work / 'epoch_1.pth').is_file(), log
    assert os.path.getsize(work / 'epoch_1.pth') > 0

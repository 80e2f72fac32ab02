"""One registry reachable from greenmim_mm, mmpretrain and mmdet configs; the installed package."""
import os
import os.path as osp
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import greenmim_mm
from greenmim_mm.models import GreenSwinTransformer

REPO = Path(__file__).resolve().parents[1]
DEMO_CFG = REPO / 'configs' / 'finetune' / 'greenswin-nano_demo-cls_128px.py'
NANO = dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])


def test_own_config_uses_mmpretrain_and_own_components_by_plain_name():
    from mmpretrain.models import GlobalAveragePooling, ImageClassifier
    from greenmim_mm.registry import MODELS
    cfg = Config.fromfile(str(DEMO_CFG))
    assert cfg.default_scope == 'greenmim_mm'
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    assert type(model) is ImageClassifier
    assert type(model.backbone) is GreenSwinTransformer
    assert isinstance(model.neck, GlobalAveragePooling)
    logits = model(torch.randn(2, 3, 128, 128), mode='tensor')
    assert logits.shape == (2, 5)


def test_mmpretrain_config_builds_scoped_greenmim_component():
    from mmpretrain.registry import MODELS
    cfg = Config(dict(
        default_scope='mmpretrain', custom_imports=dict(imports=['greenmim_mm']),
        model=dict(type='ImageClassifier',
                   backbone=dict(type='greenmim_mm.GreenSwinTransformer', arch=NANO,
                                 img_size=128, window_size=4),
                   neck=dict(type='GlobalAveragePooling'),
                   head=dict(type='LinearClsHead', num_classes=3, in_channels=128))))
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    assert type(model.backbone) is GreenSwinTransformer
    assert model(torch.randn(1, 3, 128, 128), mode='tensor').shape == (1, 3)


def test_mmdet_config_builds_scoped_backbone_into_fpn_mask_rcnn(tmp_path):
    from mmdet.registry import MODELS
    cfg_file = tmp_path / 'mask_rcnn_green.py'
    cfg_file.write_text(
        "_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'\n"
        "custom_imports = dict(imports=['greenmim_mm'], allow_failed_imports=False)\n"
        "model = dict(backbone=dict(_delete_=True, type='greenmim_mm.GreenSwinTransformer',\n"
        f"    arch={NANO!r}, window_size=7, out_indices=(0, 1, 2, 3)),\n"
        "    neck=dict(in_channels=[16, 32, 64, 128]))\n")
    cfg = Config.fromfile(str(cfg_file))
    assert cfg.default_scope == 'mmdet'
    init_default_scope('mmdet')
    detector = MODELS.build(cfg.model)
    assert type(detector.backbone) is GreenSwinTransformer
    feats = detector.extract_feat(torch.randn(1, 3, 256, 320))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 256 // s, 320 // s) for s in (4, 8, 16, 32, 64)]


def test_wheel_carries_configs_and_tools_in_dot_mim(tmp_path):
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation',
                    '-w', str(tmp_path), str(REPO)], check=True, cwd=tmp_path)
    wheel = next(tmp_path.glob('greenmim_mm-*.whl'))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert 'greenmim_mm/.mim/tools/train.py' in names
    assert 'greenmim_mm/.mim/tools/test.py' in names
    assert 'greenmim_mm/.mim/configs/finetune/greenswin-nano_demo-cls_128px.py' in names
    assert 'greenmim_mm/ops/windows.py' in names


def test_config_basenames_unique():
    names = [p.name for p in (REPO / 'configs').rglob('*.py')]
    assert len(names) == len(set(names)), 'mim finds configs by basename; they must be unique'


def _mim(args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    mim = Path(sys.executable).with_name('mim')
    return subprocess.run([str(mim)] + args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.skipif(not Path(sys.executable).with_name('mim').exists(), reason='openmim not installed')
def test_mim_train_and_test_run_current_code_from_any_directory(tmp_path):
    from greenmim_mm.datasets import demo_data
    data = tmp_path / 'data'
    demo_data.generate(str(data), size=128, train_per_class=4, val_per_class=2, det_train=2,
                            det_val=1, verbose=False)
    # the package found is this checkout (env.sh per-clone layer), so mim runs the current code
    assert osp.realpath(osp.dirname(greenmim_mm.__file__)) == str(REPO / 'greenmim_mm')
    roots = ' '.join(f'{k}.dataset.data_root={data}/' for k in
                     ('train_dataloader', 'val_dataloader', 'test_dataloader'))
    options = ['--cfg-options', 'train_cfg.max_epochs=1'] + roots.split()
    work = tmp_path / 'work'
    run = _mim(['train', 'greenmim_mm', DEMO_CFG.name, '--work-dir', str(work)] + options, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (work / 'epoch_1.pth').is_file()
    run = _mim(['test', 'greenmim_mm', DEMO_CFG.name, '--checkpoint', str(work / 'epoch_1.pth'),
                '--work-dir', str(tmp_path / 'test'), '--cfg-options'] + roots.split(), tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert 'accuracy/top1' in run.stdout + run.stderr


def test_own_registry_builds_nested_parts_in_its_scope_whatever_the_default_scope():
    """Our components build their plain-name parts (ours and mmpretrain's) even when a foreign
    default scope is active, e.g. inside an mmdet/mmpretrain run or after another Runner."""
    from greenmim_mm.registry import MODELS
    init_default_scope('mmengine')
    model = MODELS.build(dict(
        type='GreenMIM',
        backbone=dict(type='GreenSwinTransformer', arch=NANO, img_size=64, window_size=2,
                      out_indices=(3, )),
        neck=dict(type='MAEUnitDecoder', in_channels=128, embed_dims=16, depth=1, num_heads=2),
        head=dict(type='UnitReconstructionHead'),
        data_preprocessor=dict(type='SelfSupDataPreprocessor')))
    assert type(model.backbone) is GreenSwinTransformer
    assert type(model.data_preprocessor).__name__ == 'SelfSupDataPreprocessor'
    assert MODELS.get('greenmim_mm.ImageClassifier').__module__.startswith('mmpretrain')


# Command-line entry points; library code lives in the package (launch, visualization,
# datasets.demo_data). The other benchmarks are their own tools (tools/benchmark*.py import their
# sibling tools/benchmark.py) and not listed here.
ENTRY_POINTS = ('train.py', 'test.py', 'demo.py', 'make_demo_data.py',
                'visualize_reconstruction.py', 'visualize_localmim.py', 'convert_checkpoint.py',
                'benchmark_grouping.py')


@pytest.mark.parametrize('name', ENTRY_POINTS)
def test_tools_import_the_package_without_sys_path_edits(name):
    text = (REPO / 'tools' / name).read_text()
    assert 'sys.path' not in text and 'import train' not in text


@pytest.mark.parametrize('tool', ['visualize_reconstruction.py', 'visualize_localmim.py'])
def test_tool_runs_as_a_script_from_another_directory(tmp_path, tool):
    """A thin tool started from elsewhere imports the package (no sys.path edit needed); its
    argparse refuses ``--num 0`` before loading anything (it used to die with IndexError)."""
    run = subprocess.run([sys.executable, str(REPO / 'tools' / tool),
                          'missing_config.py', 'missing.pth', '--num', '0'],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "argument --num: must be at least 1, got 0" in run.stderr

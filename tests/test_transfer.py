"""Transfer: ImageNet fine-tuning and Mask R-CNN configs, layer-wise lr decay, and
pre-train -> convert -> fine-tune / detect end to end on generated data.

The layer-decay reference is GreenMIM's fine-tuning rule written out from GreenMIM's official code
(SimMIM's ``get_swin_layer``), mapped onto mmpretrain's parameter names; the weight-decay
reference is SimMIM's skip rule (1-D parameters, biases, relative position tables, absolute
position embedding) for classification and mmdet's Swin custom keys for detection.
"""
import math
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope, init_default_scope
from mmengine.runner import Runner

import greenmim_mm  # noqa: F401
import greenmim_mm.engine  # noqa: F401  (registers SwinLayerDecayOptimWrapperConstructor)
from greenmim_mm.models import GreenSwinTransformer

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
FT = osp.join(ROOT, 'configs', 'finetune')
DET = osp.join(ROOT, 'configs', 'detection')
SWIN_B = osp.join(FT, 'greenswin-base-w7_8xb128-amp-100e_in1k-224px.py')
SWIN_L = osp.join(FT, 'greenswin-large-w14_16xb48-amp-100e_in1k-224px.py')
DEMO_CLS = osp.join(FT, 'greenswin-nano_greenmim-pt_demo-cls_128px.py')
DET_1X = osp.join(DET, 'mask-rcnn_greenswin-b-p4-w7_fpn_1x_coco.py')
DET_3X = osp.join(DET, 'mask-rcnn_greenswin-b-p4-w7_fpn_ms-crop-3x_coco.py')
DET_LRD = osp.join(DET, 'mask-rcnn_greenswin-b-p4-w7_fpn_layer-decay_1x_coco.py')
DET_DEMO = osp.join(DET, 'mask-rcnn_greenswin-nano_fpn_demo_128px.py')
PRETRAIN_DEMO = osp.join(ROOT, 'configs', 'pretrain', 'greenmim_swin-nano_demo_128px.py')
SWIN_DEPTHS = [2, 2, 18, 2]  # Swin-B and Swin-L


@pytest.fixture(autouse=True)
def _fresh_scope():
    yield
    DefaultScope._instance_dict.clear()


# ----------------------------------------------------------------------------- references
def greenmim_layer_id(name, depths):
    """GreenMIM/SimMIM layer id (GreenMIM's official code) of a classifier or detector parameter."""
    top = sum(depths) + 1
    if not name.startswith('backbone.'):
        return top  # head / neck / detection heads
    parts = name.split('.')[1:]
    if parts[0] == 'patch_embed':
        return 0
    if parts[0] == 'stages':
        stage = int(parts[1])
        if parts[2] == 'downsample':
            return sum(depths[:stage + 1])
        return sum(depths[:stage]) + int(parts[3]) + 1
    return top  # norm{i}, absolute_pos_embed


def simmim_no_weight_decay(name, param):
    return (param.ndim == 1 or name.endswith('.bias') or 'relative_position_bias_table' in name
            or 'absolute_pos_embed' in name)


def mmdet_swin_no_weight_decay(name):
    return any(k in name for k in ('norm', 'relative_position_bias_table', 'absolute_pos_embed'))


# ----------------------------------------------------------------------------- helpers
def build_model(cfg, registry):
    """Build ``cfg.model`` in the config's scope (no weight init: nothing is loaded)."""
    init_default_scope(cfg.default_scope)
    return registry.build(cfg.model)


def param_groups(model, optim_cfg):
    """``{param name: param group}`` from the config's optimizer-wrapper constructor."""
    optim_cfg = optim_cfg.copy()
    optim_cfg['type'] = 'OptimWrapper'  # AmpOptimWrapper wants a GPU; the groups are the same
    optim_cfg.pop('loss_scale', None)
    wrapper = build_optim_wrapper(model, optim_cfg)
    groups = wrapper.optimizer.param_groups
    assert all(len(g['params']) == 1 for g in groups)
    named = dict(model.named_parameters())
    assert len(groups) == len(named)
    by_name = {g['param_name']: g for g in groups}
    assert all(g['params'][0] is named[n] for n, g in by_name.items())
    return by_name


def pipeline_types(pipeline):
    return [t['type'] for t in pipeline]


# ----------------------------------------------------------------------------- ImageNet configs
def test_swin_b_imagenet_recipe():
    cfg = Config.fromfile(SWIN_B)
    assert cfg.default_scope == 'mmpretrain'
    bb = cfg.model.backbone
    assert bb.type == 'greenmim_mm.GreenSwinTransformer' and bb.arch == 'base'
    assert (bb.img_size, bb.window_size, bb.drop_path_rate) == (224, 7, 0.1)
    assert bb.init_cfg.type == 'Pretrained' and bb.init_cfg.prefix == 'backbone.'
    assert cfg.model.type == 'ImageClassifier' and cfg.model.head.num_classes == 1000
    assert cfg.model.head.loss == dict(type='LabelSmoothLoss', label_smooth_val=0.1,
                                       mode='original')
    assert cfg.model.train_cfg.augments == [dict(type='Mixup', alpha=0.8),
                                            dict(type='CutMix', alpha=1.0)]
    opt = cfg.optim_wrapper
    assert opt.optimizer == dict(type='AdamW', lr=1.25e-3, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=0.05)
    assert opt.constructor == 'LearningRateDecayOptimWrapperConstructor'
    assert opt.paramwise_cfg.layer_decay_rate == 0.9 and opt.clip_grad.max_norm == 5.0
    assert cfg.auto_scale_lr == dict(base_batch_size=512, enable=True)
    assert cfg.train_cfg.max_epochs == 100
    warmup, cosine = cfg.param_scheduler
    assert (warmup.type, warmup.end, cosine.begin, cosine.end) == ('LinearLR', 20, 20, 100)
    assert warmup.start_factor * 1.25e-3 == pytest.approx(2.5e-7)
    train = cfg.train_dataloader.dataset
    assert (train.type, train.data_root, train.ann_file, train.data_prefix) == (
        'ImageNet', 'data/imagenet/', 'meta/train.txt', 'train')
    types = pipeline_types(train.pipeline)
    assert types == ['LoadImageFromFile', 'RandomResizedCrop', 'RandomFlip', 'RandAugment',
                     'RandomErasing', 'PackInputs']
    randaug = train.pipeline[3]  # rand-m9-mstd0.5-inc1
    assert (randaug.policies, randaug.num_policies, randaug.magnitude_level,
            randaug.magnitude_std, randaug.total_level) == ('timm_increasing', 2, 9, 0.5, 10)
    assert train.pipeline[4].erase_prob == 0.25 and train.pipeline[4].mode == 'rand'
    val = cfg.val_dataloader.dataset
    assert (val.ann_file, val.data_prefix) == ('meta/val.txt', 'val')


def test_swin_l_imagenet_recipe_and_windows():
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(SWIN_L)
    bb = cfg.model.backbone
    assert bb.arch == 'large' and bb.drop_path_rate == 0.3 and cfg.model.head.in_channels == 1536
    assert 'large' in bb.init_cfg.checkpoint
    assert cfg.optim_wrapper.optimizer.lr == 1e-3
    assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.8
    assert cfg.train_dataloader.batch_size * 16 == 768
    warmup, cosine = cfg.param_scheduler
    assert warmup.start_factor * 1e-3 == pytest.approx(2e-7)
    assert cosine.eta_min_ratio * 1e-3 == pytest.approx(3.5e-7)
    model = build_model(cfg, MODELS)
    windows = [{blk.attn.w_msa.window_size[0] for blk in stage.blocks}
               for stage in model.backbone.stages]
    assert windows == [{14}, {14}, {14}, {7}]


def test_imagenet_layout_and_pipeline(tmp_path):
    """The Swin-B config reads data/imagenet/{train,val} + meta/{train,val}.txt."""
    import numpy as np
    from mmpretrain.registry import DATASETS
    from PIL import Image
    root = tmp_path / 'imagenet'
    for split in ('train', 'val'):
        (root / split / 'n0001').mkdir(parents=True)
        Image.fromarray(np.full((300, 260, 3), 128, np.uint8)).save(
            root / split / 'n0001' / 'a.JPEG')
    (root / 'meta').mkdir()
    for split in ('train', 'val'):
        (root / 'meta' / f'{split}.txt').write_text('n0001/a.JPEG 0\n')
    cfg = Config.fromfile(SWIN_B)
    init_default_scope(cfg.default_scope)
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        dataset = DATASETS.build({**loader.dataset, 'data_root': str(root)})
        assert len(dataset) == 1
        sample = dataset[0]
        assert tuple(sample['inputs'].shape) == (3, 224, 224)
        assert int(sample['data_samples'].gt_label) == 0


@pytest.mark.parametrize('config,decay', [(SWIN_B, 0.9), (SWIN_L, 0.8)])
def test_imagenet_layer_decay_is_greenmims(config, decay):
    """Every parameter's lr scale is decay ** (25 - GreenMIM layer id); wd as SimMIM's."""
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(config)
    model = build_model(cfg, MODELS)
    assert type(model.backbone) is GreenSwinTransformer
    groups = param_groups(model, cfg.optim_wrapper)
    base_lr = cfg.optim_wrapper.optimizer.lr
    ids = set()
    for name, group in groups.items():
        layer = greenmim_layer_id(name, SWIN_DEPTHS)
        ids.add(layer)
        assert group['lr'] == pytest.approx(base_lr * decay**(25 - layer)), name
        wd = 0.0 if simmim_no_weight_decay(name, group['params'][0]) else 0.05
        assert group['weight_decay'] == wd, name
    assert ids == set(range(26))
    # spot checks written out by hand
    assert groups['backbone.patch_embed.projection.weight']['lr'] == pytest.approx(
        base_lr * decay**25)
    assert groups['backbone.stages.2.blocks.17.attn.w_msa.qkv.weight']['lr'] == pytest.approx(
        base_lr * decay**3)
    assert groups['backbone.stages.2.downsample.reduction.weight']['lr'] == pytest.approx(
        base_lr * decay**3)
    assert groups['backbone.stages.3.blocks.1.ffn.layers.1.weight']['lr'] == pytest.approx(
        base_lr * decay)
    assert groups['backbone.norm3.weight']['lr'] == groups['head.fc.weight']['lr'] == base_lr


# ----------------------------------------------------------------------------- COCO configs
@pytest.mark.parametrize('config,epochs,milestones', [(DET_1X, 12, [8, 11]),
                                                      (DET_3X, 36, [27, 33])])
def test_mask_rcnn_swin_b_recipe(config, epochs, milestones):
    cfg = Config.fromfile(config)
    assert cfg.default_scope == 'mmdet' and 'greenmim_mm' in cfg.custom_imports.imports
    bb = cfg.model.backbone
    assert bb.type == 'greenmim_mm.GreenSwinTransformer' and bb.arch == 'base'
    assert bb.window_size == 7 and tuple(bb.out_indices) == (0, 1, 2, 3)
    assert bb.init_cfg.type == 'Pretrained' and bb.init_cfg.prefix == 'backbone.'
    assert 'convert_weights' not in bb and 'embed_dims' not in bb  # mmdet Swin args dropped
    assert cfg.model.type == 'MaskRCNN' and cfg.model.neck.in_channels == [128, 256, 512, 1024]
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999),
                                               weight_decay=0.05)
    assert set(cfg.optim_wrapper.paramwise_cfg.custom_keys) == {
        'norm', 'relative_position_bias_table', 'absolute_pos_embed'}
    assert cfg.train_cfg.max_epochs == epochs
    assert cfg.param_scheduler[1].milestones == milestones
    multi_scale = 'RandomChoice' in pipeline_types(cfg.train_dataloader.dataset.pipeline)
    assert multi_scale == (epochs == 36)
    assert cfg.val_evaluator.metric == ['bbox', 'segm']


def test_mmpretrain_constructor_cannot_decay_a_detector():
    """Why greenmim_mm ships its own: mmpretrain's needs model.get_layer_depth."""
    from mmdet.registry import MODELS
    cfg = Config.fromfile(DET_LRD)
    model = build_model(cfg, MODELS)
    optim = cfg.optim_wrapper.copy()
    optim['constructor'] = 'mmpretrain.LearningRateDecayOptimWrapperConstructor'
    with pytest.raises(NotImplementedError, match='get_layer_depth'):
        build_optim_wrapper(model, optim)


def test_swin_layer_decay_constructor_on_mask_rcnn_swin_b():
    """greenmim_mm.SwinLayerDecayOptimWrapperConstructor from mmdet's scope, on Swin-B Mask R-CNN:
    backbone lr 1e-4 * 0.9 ** (25 - id), neck and heads 1e-4; wd 0 on norms and tables."""
    from mmdet.registry import MODELS
    cfg = Config.fromfile(DET_LRD)
    assert cfg.optim_wrapper.constructor == 'greenmim_mm.SwinLayerDecayOptimWrapperConstructor'
    model = build_model(cfg, MODELS)
    assert type(model.backbone) is GreenSwinTransformer
    groups = param_groups(model, cfg.optim_wrapper)
    ids = set()
    for name, group in groups.items():
        layer = greenmim_layer_id(name, SWIN_DEPTHS)
        ids.add(layer)
        assert group['lr'] == pytest.approx(1e-4 * 0.9**(25 - layer)), name
        assert group['weight_decay'] == (0.0 if mmdet_swin_no_weight_decay(name) else 0.05), name
    assert ids == set(range(26))
    heads = [n for n in groups if not n.startswith('backbone.')]
    assert any(n.startswith('neck.') for n in heads) and any('roi_head' in n for n in heads)
    assert all(groups[n]['lr'] == pytest.approx(1e-4) for n in heads)
    for i in range(4):  # detection-only output norms: top layer, no weight decay
        assert groups[f'backbone.norm{i}.weight']['lr'] == pytest.approx(1e-4)
        assert groups[f'backbone.norm{i}.weight']['weight_decay'] == 0.0


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope='module')
def tiny_data(demo_data_factory):
    return demo_data_factory('transfer_data', train_per_class=4, val_per_class=4, det_train=8,
                             det_val=4)


@pytest.fixture(scope='module')
def converted(tiny_data, tmp_path_factory, load_tool):
    """A few iterations of the demo GreenMIM pre-training (tools/train.py), converted to
    backbone weights (tools/convert_checkpoint.py)."""
    from greenmim_mm.apis import launch
    convert_checkpoint = load_tool('convert_checkpoint')
    work = tmp_path_factory.mktemp('transfer_pt')
    launch.main_train([PRETRAIN_DEMO, '--work-dir', str(work), '--cfg-options',
                'train_cfg.max_epochs=1', 'train_dataloader.batch_size=8',
                f'train_dataloader.dataset.data_root={tiny_data}/'])
    out = str(work / 'backbone_converted.pth')
    assert convert_checkpoint.main(['--src', 'greenmim_mm', str(work / 'epoch_1.pth'), out]) == 0
    DefaultScope._instance_dict.clear()
    return out


def assert_backbone_is(cfg, registry, checkpoint):
    """The config's init_cfg loads every converted tensor into the backbone, exactly."""
    init_default_scope(cfg.default_scope)
    model = registry.build(cfg.model)
    model.init_weights()
    own = model.backbone.state_dict()
    ref = torch.load(checkpoint, map_location='cpu')['state_dict']
    assert ref and all(k.startswith('backbone.') for k in ref)
    for key, value in ref.items():
        assert torch.equal(own[key[len('backbone.'):]], value), key


@pytest.fixture(scope='module')
def demo_cls_data(demo_data_factory):
    """The demo classification set at its real size (400 train / 80 val images per class)."""
    return demo_data_factory('demo_cls_data', train_per_class=400, val_per_class=80)


# Held-out bar for 5 classes on the 400 validation images: a classifier at chance (p = 0.2)
# scores 80 +- 8 correct; 26 % (104 correct) is 3 standard deviations above (one-sided p ~ 0.15 %).
CHANCE_BAR = 26.0


def test_demo_pretrain_convert_finetune_beats_chance(demo_cls_data, tmp_path, load_tool):
    """Pre-train -> convert -> fine-tune on the demo data; held-out top-1 clears chance.

    Short pre-training (2 epochs) and the demo fine-tuning config's own schedule (12 epochs,
    about 5 min on 2 CPU cores); the fine-tuned classifier must score >= CHANCE_BAR on the 400
    validation images it never trained on. It scores 31.25 % here (README, Transfer, demo)."""
    from mmpretrain.registry import MODELS

    from greenmim_mm.apis import launch
    convert_checkpoint = load_tool('convert_checkpoint')
    data = f'{demo_cls_data}/'
    launch.main_train([PRETRAIN_DEMO, '--work-dir', str(tmp_path / 'pt'), '--cfg-options',
                'train_cfg.max_epochs=2', f'train_dataloader.dataset.data_root={data}'])
    converted = str(tmp_path / 'backbone_converted.pth')
    assert convert_checkpoint.main(
        ['--src', 'greenmim_mm', str(tmp_path / 'pt' / 'epoch_2.pth'), converted]) == 0
    DefaultScope._instance_dict.clear()

    argv = [DEMO_CLS, '--work-dir', str(tmp_path / 'ft'), '--cfg-options',
            f'model.backbone.init_cfg.checkpoint={converted}',
            'default_hooks.checkpoint.interval=100', 'train_cfg.val_interval=100']
    argv += [f'{split}_dataloader.dataset.data_root={data}' for split in ('train', 'val', 'test')]
    cfg = launch.build_train_config(launch.parse_train_args(argv))
    assert cfg.train_cfg.max_epochs == 12 and cfg.model.backbone.init_cfg.type == 'Pretrained'
    held_out_split = cfg.test_dataloader.dataset
    assert (held_out_split.ann_file, held_out_split.data_prefix) == ('meta/val.txt', 'val')
    assert_backbone_is(cfg, MODELS, converted)

    runner = Runner.from_cfg(cfg)
    runner.train()
    held_out = runner.test()['accuracy/top1']  # test split = the validation images
    print(f'held-out top-1 after pre-train -> convert -> fine-tune: {held_out:.2f} %')
    assert held_out >= CHANCE_BAR


def test_pretrain_convert_mask_rcnn(tiny_data, converted, tmp_path):
    """Mask R-CNN demo initialised from the converted pre-training: trains a few iterations and
    evaluates with CocoMetric; every bbox and segm mAP is finite."""
    from mmdet.registry import MODELS
    cfg = Config.fromfile(DET_DEMO)
    coco = f'{tiny_data}/coco/'
    cfg.merge_from_dict({
        'work_dir': str(tmp_path),
        'model.backbone.init_cfg.checkpoint': converted,
        'train_dataloader.batch_size': 4,
        'train_dataloader.dataset.data_root': coco,
        'val_dataloader.dataset.data_root': coco,
        'test_dataloader.dataset.data_root': coco,
        'val_evaluator.ann_file': coco + 'annotations/instances_val.json',
        'test_evaluator.ann_file': coco + 'annotations/instances_val.json',
        'train_cfg.max_epochs': 1, 'default_hooks.checkpoint.interval': 100,
        # an untrained detector scores below mmdet's 0.05 cut; keep its boxes so the
        # metric has results to score
        'model.test_cfg.rcnn.score_thr': 0.0,
    })
    cfg.param_scheduler = None  # constant lr for these few iterations
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None  # evaluated once, by test()
    assert_backbone_is(cfg, MODELS, converted)

    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.test()
    for task in ('bbox', 'segm'):
        keys = [k for k in metrics if k.startswith(f'coco/{task}_mAP')]
        assert f'coco/{task}_mAP' in keys and f'coco/{task}_mAP_50' in keys
        assert all(math.isfinite(metrics[k]) for k in keys), metrics


def test_demo_detector_predicts_non_square_images():
    """mmdet's inference on a 480x640 image (resized to 96x128): with pad_size_divisor 32 the
    last stage was a 3x4 map, smaller than window 4, and mmpretrain's Swin stopped with an
    assertion; the demo config pads to 128 (32 x window 4) now."""
    import numpy as np
    from mmdet.apis import inference_detector, init_detector
    cfg = Config.fromfile(DET_DEMO)
    assert cfg.model.data_preprocessor.pad_size_divisor == 128
    cfg.model.backbone.init_cfg = None
    result = inference_detector(init_detector(cfg, device='cpu'), np.zeros((480, 640, 3), np.uint8))
    assert result.metainfo['img_shape'] == (96, 128) and result.metainfo['pad_shape'] == (128, 128)
    assert result.pred_instances.bboxes.shape[1] == 4

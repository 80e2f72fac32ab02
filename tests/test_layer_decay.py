"""greenmim_mm's layer-decay constructor applies ``custom_keys`` ``lr_mult`` / ``decay_mult`` on top
of the layer rate, as mmengine's ``DefaultOptimWrapperConstructor`` does (issue 20, item 3;
mmseg#1623, mmengine#846: mmpretrain's stores ``lr_mult`` in the group and ignores it).

References: mmengine's own ``DefaultOptimWrapperConstructor`` (layer rate 1: every parameter's lr
and weight decay must be identical), and the layer rule written out (GreenMIM/SimMIM Swin layer
ids; mmpretrain ViT's ``get_layer_depth``) times the custom key's ``lr_mult``.
"""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import DefaultOptimWrapperConstructor, build_optim_wrapper
from mmengine.registry import DefaultScope, init_default_scope

import greenmim_mm  # noqa: F401
import greenmim_mm.engine  # noqa: F401
from greenmim_mm.engine.layer_decay import SwinLayerDecayOptimWrapperConstructor

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET = osp.join(ROOT, 'configs', 'detection')
SWIN_DEMO = osp.join(DET, 'mask-rcnn_greenswin-nano_fpn_demo_128px.py')
TWINS_DEMO = osp.join(DET, 'mask-rcnn_greentwins-nano_fpn_demo_128px.py')
NANO_DEPTHS = [2, 2, 2, 2]
BASE_LR, BASE_WD = 4e-4, 0.05
# The case (backbone lr x 0.1) plus a decay_mult, a key longer than 'backbone' that
# must win inside the backbone, and a neck multiplier.
CUSTOM = {
    'backbone': dict(lr_mult=0.1, decay_mult=0.5),
    'relative_position_bias_table': dict(decay_mult=0.0),
    'neck': dict(lr_mult=2.0),
}


@pytest.fixture(autouse=True)
def _fresh_scope():
    yield
    DefaultScope._instance_dict.clear()


def swin_layer_id(name, depths):
    """GreenMIM/SimMIM layer id of a detector parameter (written out)."""
    top = sum(depths) + 1
    parts = name.split('.')
    if parts[0] != 'backbone':
        return top
    if parts[1] == 'patch_embed':
        return 0
    if parts[1] == 'stages':
        stage = int(parts[2])
        if parts[3] == 'downsample':
            return sum(depths[:stage + 1])
        return sum(depths[:stage]) + int(parts[4]) + 1
    return top


def lr_mult_of(name):
    """mmengine's rule by hand: the longest custom key contained in the name."""
    keys = [k for k in CUSTOM if k in name]
    return CUSTOM[max(keys, key=len)].get('lr_mult', 1.0) if keys else 1.0


def detector(config):
    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    from mmdet.registry import MODELS
    return MODELS.build(cfg.model)


def vit_classifier():
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    return MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='VisionTransformer', img_size=32, patch_size=16,
                      arch=dict(embed_dims=32, num_layers=3, num_heads=2,
                                feedforward_channels=64)),
        neck=None, head=dict(type='LinearClsHead', num_classes=3, in_channels=32)))


def per_param(model, constructor, paramwise_cfg):
    """{param name: (lr, weight_decay)} from ``constructor`` (a class) on ``model``."""
    optim = dict(type='OptimWrapper',
                 optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD))
    wrapper = constructor(optim, paramwise_cfg)(model)
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            out[names[id(p)]] = (group['lr'], group['weight_decay'])
    assert len(out) == len(names)
    return out


PARAMWISE = dict(norm_decay_mult=0.0, bias_decay_mult=0.0, custom_keys=CUSTOM)


@pytest.mark.parametrize('build', [lambda: detector(SWIN_DEMO), lambda: detector(TWINS_DEMO),
                                   vit_classifier], ids=['swin-maskrcnn', 'twins-maskrcnn', 'vit'])
def test_layer_rate_one_equals_mmengines_default_constructor(build):
    """Layer rate 1: every parameter's lr and weight decay are exactly mmengine's."""
    model = build()
    theirs = per_param(model, DefaultOptimWrapperConstructor, PARAMWISE)
    ours = per_param(model, SwinLayerDecayOptimWrapperConstructor,
                     dict(PARAMWISE, layer_decay_rate=1.0))
    assert ours == theirs
    proj = next(n for n in ours if n.startswith('backbone.') and n.endswith('projection.weight'))
    assert ours[proj] == (BASE_LR * 0.1, BASE_WD * 0.5)


def test_swin_detector_lr_mult_on_top_of_the_layer_rate():
    """The issue's case: custom_keys={'backbone': dict(lr_mult=0.1)} with layer decay 0.9 on
    the Swin Mask R-CNN: lr = 4e-4 * 0.9 ** (top - id) * lr_mult; wd as mmengine's."""
    model = detector(SWIN_DEMO)
    ours = per_param(model, SwinLayerDecayOptimWrapperConstructor,
                     dict(PARAMWISE, layer_decay_rate=0.9))
    wd_ref = per_param(model, DefaultOptimWrapperConstructor, PARAMWISE)
    top = sum(NANO_DEPTHS) + 1
    for name, (lr, wd) in ours.items():
        expected = BASE_LR * 0.9**(top - swin_layer_id(name, NANO_DEPTHS)) * lr_mult_of(name)
        assert lr == pytest.approx(expected, rel=1e-12), name
        assert wd == wd_ref[name][1], name
    assert ours['backbone.stages.0.blocks.0.attn.w_msa.qkv.weight'] == pytest.approx(
        (BASE_LR * 0.9**8 * 0.1, BASE_WD * 0.5), rel=1e-12)
    assert ours['backbone.stages.1.blocks.1.attn.w_msa.relative_position_bias_table'] == \
        pytest.approx((BASE_LR * 0.9**5, 0.0), rel=1e-12)  # id 4; its longer key wins
    assert ours['neck.fpn_convs.0.conv.weight'] == pytest.approx((BASE_LR * 2.0, BASE_WD))


def test_vit_classifier_lr_mult_on_top_of_the_layer_rate():
    """mmpretrain ViT classifier (the model's own get_layer_depth): ratio to the undecayed
    mmengine lr is exactly rate ** (num_layers - 1 - layer_id)."""
    model = vit_classifier()
    ours = per_param(model, SwinLayerDecayOptimWrapperConstructor,
                     dict(PARAMWISE, layer_decay_rate=0.75))
    ref = per_param(model, DefaultOptimWrapperConstructor, PARAMWISE)
    for name, (lr, wd) in ours.items():
        layer_id, num_layers = model.get_layer_depth(name)
        assert lr == pytest.approx(ref[name][0] * 0.75**(num_layers - 1 - layer_id),
                                   rel=1e-12), name
        assert wd == ref[name][1], name
    assert ours['backbone.layers.0.ffn.layers.1.weight'][0] == pytest.approx(
        BASE_LR * 0.1 * 0.75**3, rel=1e-12)  # id 1 of 5


def test_from_a_config_of_another_scope_and_unsupported_options():
    """Built by name through mmengine's root registry from a foreign default scope (as an mmseg
    or mmdet config does), with the alias name; mmengine options it does not apply refused."""
    model = detector(SWIN_DEMO)
    init_default_scope('mmengine')
    wrapper = build_optim_wrapper(model, dict(
        constructor='greenmim_mm.LayerDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD),
        paramwise_cfg=dict(layer_decay_rate=0.9, custom_keys={'backbone': dict(lr_mult=0.1)})))
    qkv = model.backbone.stages[0].blocks[0].attn.w_msa.qkv.weight
    group = next(g for g in wrapper.optimizer.param_groups if g['params'][0] is qkv)
    assert group['lr'] == pytest.approx(BASE_LR * 0.9**8 * 0.1, rel=1e-12)
    with pytest.raises(ValueError, match=r"does not apply paramwise_cfg \['bias_lr_mult'\]"):
        build_optim_wrapper(model, dict(
            constructor='greenmim_mm.SwinLayerDecayOptimWrapperConstructor',
            optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD),
            paramwise_cfg=dict(layer_decay_rate=0.9, bias_lr_mult=2.0)))


def test_mmseg_scope_reaches_the_constructor():
    """From mmseg's default scope (helper configs for UperNet use it)."""
    pytest.importorskip('mmseg')
    model = detector(SWIN_DEMO)
    init_default_scope('mmseg')
    import mmseg.registry  # noqa: F401
    wrapper = build_optim_wrapper(model, dict(
        constructor='greenmim_mm.SwinLayerDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD),
        paramwise_cfg=dict(layer_decay_rate=0.9, custom_keys={'backbone': dict(lr_mult=0.1)})))
    assert min(g['lr'] for g in wrapper.optimizer.param_groups) == pytest.approx(
        BASE_LR * 0.9**9 * 0.1, rel=1e-12)
    assert isinstance(wrapper.optimizer, torch.optim.AdamW)

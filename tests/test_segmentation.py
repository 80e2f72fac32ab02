"""Semantic segmentation (mmsegmentation 1.2.2): UperNet configs, strict loading of converted
weights, layer-wise lr decay, the demo segmentation set and pre-train -> convert -> segment.

References: timm's ``VisionTransformer`` for the ViT segmentation backbone's features; the layer-id
rules written out here from GreenMIM's official fine-tuning (SimMIM's ``get_swin_layer``) and
BEiT's ``LayerDecayOptimizerConstructor`` (which the official LocalMIM ViT recipe uses); brute
force pixel counts for the demo baseline; pycocotools' polygon masks for the demo masks.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope, init_default_scope
from mmengine.runner import Runner
from PIL import Image

import greenmim_mm  # noqa: F401
import greenmim_mm.segmentation  # noqa: F401
from greenmim_mm.datasets import demo_data
from greenmim_mm.models import GreenSwinTransformer, GreenTwinsSVT
from greenmim_mm.models.backbones.pretrained import PretrainedLoadError
from greenmim_mm.segmentation import LocalMIMSegMAE

ROOT = Path(__file__).resolve().parents[1]
SEG = ROOT / 'configs' / 'segmentation'
SWIN_B = SEG / 'upernet_greenswin-b-p4-w7_8xb2-amp-160k_ade20k-512x512.py'
SWIN_B_LRD = SEG / 'upernet_greenswin-b-p4-w7_layer-decay_8xb2-amp-160k_ade20k-512x512.py'
TWINS_L = SEG / 'upernet_greentwins-svt-l_8xb2-amp-160k_ade20k-512x512.py'
VIT_B = SEG / 'upernet_localmim-vit-b-p16_8xb2-amp-160k_ade20k-512x512.py'
DEMO = SEG / 'upernet_greenswin-nano_demo_128px.py'
FULL = (SWIN_B, SWIN_B_LRD, TWINS_L, VIT_B)
PRETRAIN_DEMO = ROOT / 'configs' / 'pretrain' / 'greenmim_swin-nano_demo_128px.py'
# Small ViT standing in for ViT-B where only the key layout matters (12 blocks: out_indices
# [1, 3, 9, 11] of the recipe stay valid).
SMALL_VIT = dict(embed_dims=32, num_heads=2)


@pytest.fixture(autouse=True)
def _fresh_scope():
    yield
    DefaultScope._instance_dict.clear()


# ----------------------------------------------------------------------------- references
def swin_layer_id(name, depths):
    """GreenMIM/SimMIM layer id of a segmentor parameter (GreenMIM's official fine-tuning rule)."""
    top = sum(depths) + 1
    if not name.startswith('backbone.'):
        return top  # decode / auxiliary heads
    parts = name.split('.')[1:]
    if parts[0] == 'patch_embed':
        return 0
    if parts[0] == 'stages':
        stage = int(parts[1])
        if parts[2] == 'downsample':
            return sum(depths[:stage + 1])
        return sum(depths[:stage]) + int(parts[3]) + 1
    return top


def beit_layer_id(name, num_layers):
    """BEiT's layer id (its LayerDecayOptimizerConstructor's get_num_layer_for_vit)."""
    if name in ('backbone.cls_token', 'backbone.mask_token', 'backbone.pos_embed'):
        return 0
    if name.startswith('backbone.patch_embed'):
        return 0
    if name.startswith('backbone.layers'):
        return int(name.split('.')[2]) + 1
    return num_layers + 1


def beit_no_weight_decay(name, param):
    return param.ndim == 1 or name.endswith('.bias')


def swin_no_weight_decay(name):
    return any(k in name for k in ('norm', 'relative_position_bias_table', 'absolute_pos_embed'))


# ----------------------------------------------------------------------------- helpers
def seg_config(path, **options):
    cfg = Config.fromfile(str(path))
    cfg.merge_from_dict(options)
    return cfg


def build_segmentor(cfg):
    from mmseg.registry import MODELS
    init_default_scope(cfg.default_scope)
    return revert_sync_batchnorm(MODELS.build(cfg.model))


def no_init(cfg):
    cfg.model.backbone.init_cfg = None
    return cfg


def small_vit(cfg, img=64):
    """The ViT config at SMALL_VIT's width and ``img`` px (relative tables are per grid)."""
    cfg.model.backbone.update(SMALL_VIT, img_size=(img, img))
    cfg.model.neck.embed_dim = SMALL_VIT['embed_dims']
    cfg.model.decode_head.update(in_channels=[SMALL_VIT['embed_dims']] * 4, channels=32)
    cfg.model.auxiliary_head.update(in_channels=SMALL_VIT['embed_dims'], channels=16)
    cfg.model.test_cfg.update(crop_size=(img, img), stride=(img // 2, img // 2))
    return cfg


def param_groups(model, optim_cfg):
    """``{param name: param group}`` from the config's optimizer-wrapper constructor."""
    optim_cfg = optim_cfg.copy()
    optim_cfg['type'] = 'OptimWrapper'  # AmpOptimWrapper wants a GPU; the groups are the same
    optim_cfg.pop('loss_scale', None)
    wrapper = build_optim_wrapper(model, optim_cfg)
    named = dict(model.named_parameters())
    groups = {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            name = next(n for n, q in named.items() if q is p)
            groups[name] = group
    assert set(groups) == set(named)
    return groups


def fake_inputs(size, num_classes, batch=2):
    """Random images and label maps packed as mmseg's data preprocessor returns them."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(batch):
        s = SegDataSample(metainfo=dict(img_shape=size, ori_shape=size, pad_shape=size))
        s.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, *size), generator=g))
        samples.append(s)
    return torch.randn(batch, 3, *size, generator=g), samples


def save(obj, path):
    torch.save(obj, str(path))
    return str(path)


# ----------------------------------------------------------------------------- environment
def test_mmseg_mmdet_mmpretrain_import_together():
    """mmseg 1.2.2 (with its CLIP tokenizer's ftfy / regex), mmdet's and mmpretrain's models in one
    process; our backbones resolve from mmseg's registry by the `greenmim_mm.` prefix."""
    import mmdet.models  # noqa: F401
    import mmpretrain.models  # noqa: F401
    import mmseg
    import mmseg.models  # noqa: F401
    from mmseg.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
    assert mmseg.__version__ == '1.2.2'
    assert MODELS.get('greenmim_mm.GreenSwinTransformer') is GreenSwinTransformer
    assert MODELS.get('greenmim_mm.GreenTwinsSVT') is GreenTwinsSVT
    assert MODELS.get('greenmim_mm.LocalMIMSegMAE') is LocalMIMSegMAE
    assert OPTIM_WRAPPER_CONSTRUCTORS.get('greenmim_mm.SwinLayerDecayOptimWrapperConstructor')
    assert MODELS.get('UPerHead').__module__.startswith('mmseg')


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize('path', FULL + (DEMO, ), ids=lambda p: p.stem)
def test_config_builds_and_runs_a_forward(path):
    """Every segmentation config builds (weights not loaded) and runs training losses and a
    prediction on a small input (ViT at 64 px and a narrow width: its tables are per grid)."""
    cfg = no_init(seg_config(path))
    if path == VIT_B:
        cfg = small_vit(cfg)
    size = (64, 64) if path == VIT_B else (128, 128)
    model = build_segmentor(cfg)
    num_classes = cfg.model.decode_head.num_classes
    inputs, samples = fake_inputs(size, num_classes)
    model.train()
    losses = model(inputs, samples, mode='loss')
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(losses)
    assert all(torch.isfinite(v).all() for k, v in losses.items() if 'loss' in k)
    model.eval()
    with torch.no_grad():
        preds = model(inputs, samples, mode='predict')
    assert preds[0].seg_logits.data.shape == (num_classes, *size)
    assert preds[0].pred_sem_seg.data.shape == (1, *size)


@pytest.mark.parametrize('path', FULL, ids=lambda p: p.stem)
def test_full_recipes(path):
    """ADE20K 512x512, 160k iterations, 2 images x 8 GPUs, AMP, warm-up 1500 then poly, UPerHead +
    auxiliary FCNHead, 150 classes, converted weights through a strict Pretrained init_cfg."""
    cfg = seg_config(path)
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_dataloader.batch_size == 2
    assert cfg.crop_size == (512, 512)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end) == ('LinearLR', 1e-6, 1500)
    assert (poly.type, poly.power, poly.eta_min, poly.end) == ('PolyLR', 1.0, 0.0, 160000)
    assert cfg.model.decode_head.type == 'UPerHead'
    assert cfg.model.auxiliary_head.type == 'FCNHead'
    assert cfg.model.auxiliary_head.loss_decode.loss_weight == 0.4
    assert cfg.model.decode_head.num_classes == cfg.model.auxiliary_head.num_classes == 150
    assert cfg.model.backbone.init_cfg.prefix == 'backbone.'
    assert cfg.model.backbone.type.startswith('greenmim_mm.')
    assert cfg.train_dataloader.dataset.type == 'ADE20KDataset'


def test_official_localmim_settings():
    """The official LocalMIM recipes' numbers (Swin-B: AdamW 6e-5, wd 0.01, drop path 0.3, whole
    inference; ViT-B: AdamW 4e-4, wd 0.05, layer decay 0.65, drop path 0.1, blocks [1, 3, 9, 11],
    768-channel UPerHead, slide 512 / 341)."""
    swin, vit = seg_config(SWIN_B), seg_config(VIT_B)
    assert swin.optim_wrapper.optimizer == dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999),
                                                weight_decay=0.01)
    assert swin.model.backbone.drop_path_rate == 0.3 and swin.model.backbone.window_size == 7
    assert swin.model.test_cfg.mode == 'whole'
    assert vit.optim_wrapper.optimizer == dict(type='AdamW', lr=4e-4, betas=(0.9, 0.999),
                                               weight_decay=0.05)
    assert vit.optim_wrapper.paramwise_cfg == dict(num_layers=12, layer_decay_rate=0.65)
    assert vit.model.backbone.out_indices == [1, 3, 9, 11]
    assert vit.model.backbone.drop_path_rate == 0.1 and vit.model.backbone.init_values == 1.0
    assert vit.model.decode_head.channels == 768
    assert vit.model.test_cfg == dict(mode='slide', crop_size=(512, 512), stride=(341, 341))
    assert vit.model.pretrained is None  # the base's MAE file would override init_cfg


def test_vit_feature_pyramid_is_the_official_localmim_one():
    """The ViT-B config's neck computes the official LocalMIM ViT's fpn1-fpn4
    (semantic_segmentation/backbone/vit.py): fpn1 = ConvT 2x2, BN, GELU, ConvT 2x2; fpn2 = ConvT
    2x2; fpn3 = identity; fpn4 = 2x2 *average* pool (BEiT and mmseg's Feature2Pyramid max-pool)."""
    import torch.nn.functional as F
    from mmseg.registry import MODELS
    cfg = small_vit(seg_config(VIT_B))
    init_default_scope(cfg.default_scope)
    neck = revert_sync_batchnorm(MODELS.build(cfg.model.neck)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in neck.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        bn = neck.upsample_4x[1]
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        feats = [torch.randn(2, SMALL_VIT['embed_dims'], 4, 4, generator=g) for _ in range(4)]
        out = neck(feats)
        up1, _, _, up2 = neck.upsample_4x
        fpn1 = F.conv_transpose2d(feats[0], up1.weight, up1.bias, stride=2)
        fpn1 = F.gelu(F.batch_norm(fpn1, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                   eps=bn.eps))
        fpn1 = F.conv_transpose2d(fpn1, up2.weight, up2.bias, stride=2)
        up = neck.upsample_2x[0]
        ref = (fpn1, F.conv_transpose2d(feats[1], up.weight, up.bias, stride=2), feats[2],
               F.avg_pool2d(feats[3], 2, 2))
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- strict loading
def swin_pretraining_checkpoint(arch, window, **kw):
    """A greenmim_mm-style pre-training checkpoint of a Swin (backbone with the last stage's norm
    only, plus decoder keys the converter drops)."""
    backbone = GreenSwinTransformer(arch=arch, img_size=224, window_size=window,
                                    out_indices=(3, ), **kw)
    sd = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    sd['neck.decoder_embed.weight'] = torch.zeros(4, 4)
    return {'state_dict': sd, 'meta': {'epoch': 1}}


def convert(load_tool, tmp_path, ckpt, src):
    convert_checkpoint = load_tool('convert_checkpoint')
    out = tmp_path / f'{src}_converted.pth'
    assert convert_checkpoint.main(['--src', src, save(ckpt, tmp_path / f'{src}.pth'),
                                    str(out)]) == 0
    return str(out)


def assert_loaded(model, converted, optional_missing):
    """Every converted tensor is in the backbone, exactly; every other backbone tensor matches
    ``optional_missing`` (documented fresh initialisation)."""
    own = model.backbone.state_dict()
    ref = torch.load(converted, map_location='cpu', weights_only=True)['state_dict']
    assert ref and all(k.startswith('backbone.') for k in ref)
    for key, value in ref.items():
        assert torch.equal(own[key[len('backbone.'):]], value), key
    rest = sorted(set(own) - {k[len('backbone.'):] for k in ref})
    assert all(any(p in k for p in optional_missing) for k in rest), rest


@pytest.mark.parametrize('path', (SWIN_B, SWIN_B_LRD), ids=lambda p: p.stem)
def test_converted_swin_loads_strictly(path, tmp_path, load_tool):
    """tools/convert_checkpoint.py output of a Swin pre-training loads into the config's backbone
    through its init_cfg (nano width for speed: the key layout is the same as Swin-B's)."""
    converted = convert(load_tool, tmp_path, swin_pretraining_checkpoint('nano', 7),
                        'greenmim_mm')
    cfg = seg_config(path, **{'model.backbone.arch': 'nano',
                              'model.backbone.init_cfg.checkpoint': converted})
    cfg.model.decode_head.in_channels = [32, 64, 128, 256]
    cfg.model.auxiliary_head.in_channels = 128
    model = build_segmentor(cfg)
    model.init_weights()
    assert_loaded(model, converted, ('norm0.', 'norm1.', 'norm2.'))
    # a file without one of the backbone's tensors is one error naming the file and the key
    sd = torch.load(converted, weights_only=True)['state_dict']
    del sd['backbone.stages.1.blocks.0.norm1.weight']
    cfg.model.backbone.init_cfg.checkpoint = save({'state_dict': sd}, tmp_path / 'partial.pth')
    with pytest.raises(PretrainedLoadError, match=r'partial\.pth.*stages\.1\.blocks\.0\.norm1'):
        build_segmentor(cfg).backbone.init_weights()


def test_converted_twins_loads(tmp_path, load_tool):
    """Our Twins pre-training, converted, fills every tensor of the SVT-L config's backbone but
    the per-stage output norms 0-2 (nano width)."""
    source = GreenTwinsSVT(arch='nano', qkv_bias=True,
                           norm_after_stage=[False, False, False, True])
    ckpt = {'state_dict': {f'backbone.{k}': v for k, v in source.state_dict().items()}}
    converted = convert(load_tool, tmp_path, ckpt, 'greenmim_mm')
    cfg = seg_config(TWINS_L, **{'model.backbone.arch': 'nano',
                                 'model.backbone.init_cfg.checkpoint': converted})
    embed = GreenTwinsSVT.arch_zoo['nano']['embed_dims']
    cfg.model.decode_head.in_channels = list(embed)
    cfg.model.auxiliary_head.in_channels = embed[2]
    model = build_segmentor(cfg)
    model.init_weights()
    assert_loaded(model, converted, ('norm_after_stage0.', 'norm_after_stage1.',
                                     'norm_after_stage2.'))
    # strict both ways: a missing backbone tensor or a tensor the backbone lacks is one error
    sd = torch.load(converted, weights_only=True)['state_dict']
    missing = {k: v for k, v in sd.items() if k != 'backbone.stages.2.0.attn.qkv.weight'}
    extra = dict(sd, **{'backbone.stages.9.proj.weight': torch.zeros(1)})
    for name, broken, key in (('missing', missing, r'stages\.2\.0\.attn\.qkv\.weight'),
                              ('extra', extra, r'stages\.9\.proj\.weight')):
        cfg.model.backbone.init_cfg.checkpoint = save({'state_dict': broken},
                                                      tmp_path / f'{name}.pth')
        with pytest.raises(PretrainedLoadError, match=rf'{name}\.pth.*{key}'):
            build_segmentor(cfg).backbone.init_weights()


def official_localmim_vit(img=64, depth=12, embed=SMALL_VIT['embed_dims'], heads=2):
    """timm ViT with qkv bias (the official LocalMIM ViT's encoder) and an official-style
    checkpoint of it: ``{'model': ...}`` with per-head norms ``norm.{k}`` and decoder keys."""
    import timm
    vit = timm.create_model('vit_base_patch16_224', pretrained=False, img_size=img,
                            embed_dim=embed, depth=depth, num_heads=heads, num_classes=0,
                            global_pool='', class_token=True, fc_norm=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in vit.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    sd = {k: v for k, v in vit.state_dict().items() if not k.startswith(('norm.', 'head'))}
    for k in range(4):
        sd[f'norm.{k}.weight'] = torch.ones(embed)
        sd[f'norm.{k}.bias'] = torch.zeros(embed)
    sd['decoder.0.weight'] = torch.zeros(2, 2)
    return vit, {'model': sd}


def test_converted_localmim_vit_loads_strictly_and_matches_timm(tmp_path, load_tool):
    """Official LocalMIM ViT -> convert (--src localmim-official-vit) -> the ViT-B config's
    backbone (narrow, 64 px) through its init_cfg: every tensor of the file loads, only the
    relative position tables (zero) and layer scales (1.0) are new, and the four outputs equal
    timm's blocks [1, 3, 9, 11] (tokens as NCHW maps)."""
    vit, ckpt = official_localmim_vit()
    converted = convert(load_tool, tmp_path, ckpt, 'localmim-official-vit')
    cfg = small_vit(seg_config(VIT_B, **{'model.backbone.init_cfg.checkpoint': converted,
                                         'model.backbone.drop_path_rate': 0.0}))
    model = build_segmentor(cfg)
    model.init_weights()
    assert_loaded(model, converted, ('relative_position_bias_table', 'relative_position_index',
                                     'gamma_1', 'gamma_2'))
    backbone = model.backbone
    backbone.eval()  # mmseg's BEiT.train returns None
    for layer in backbone.layers:
        assert torch.count_nonzero(layer.attn.relative_position_bias_table) == 0
        assert torch.equal(layer.gamma_1, torch.ones_like(layer.gamma_1))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = backbone(x)
        tokens = vit.patch_embed(x)
        tokens = torch.cat([vit.cls_token.expand(2, -1, -1), tokens], 1) + vit.pos_embed
        ref = []
        for i, block in enumerate(vit.blocks):
            tokens = block(tokens)
            if i in (1, 3, 9, 11):
                ref.append(tokens[:, 1:].transpose(1, 2).reshape(2, -1, 4, 4))
    assert len(ours) == 4
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_localmim_vit_resizes_position_embedding_and_refuses_misfits(tmp_path, load_tool):
    """A 64-px pre-training loads into a 128-px backbone (pos_embed resized as mmseg's MAE does);
    a file without a block tensor, or with an extra one, is one PretrainedLoadError."""
    _, ckpt = official_localmim_vit()
    converted = convert(load_tool, tmp_path, ckpt, 'localmim-official-vit')
    cfg = small_vit(seg_config(VIT_B, **{'model.backbone.init_cfg.checkpoint': converted}),
                    img=128)
    model = build_segmentor(cfg)
    model.init_weights()
    ref = torch.load(converted, weights_only=True)['state_dict']['backbone.pos_embed']
    expected = model.backbone.resize_abs_pos_embed({'pos_embed': ref.clone()})['pos_embed']
    assert model.backbone.pos_embed.shape == (1, 1 + 8 * 8, SMALL_VIT['embed_dims'])
    torch.testing.assert_close(model.backbone.pos_embed.data, expected, rtol=0, atol=0)

    sd = torch.load(converted, weights_only=True)['state_dict']
    for name, broken in (('missing', {k: v for k, v in sd.items() if 'layers.5.ln2' not in k}),
                         ('extra', {**sd, 'backbone.layers.12.ln1.weight': torch.ones(32)})):
        path = save({'state_dict': broken}, tmp_path / f'{name}.pth')
        cfg.model.backbone.init_cfg.checkpoint = path
        with pytest.raises(PretrainedLoadError, match=f'{name}.pth'):
            build_segmentor(cfg).backbone.init_weights()


# ----------------------------------------------------------------------------- layer decay
def test_swin_layer_decay_rates_on_upernet():
    """Swin-B UperNet with greenmim_mm's constructor from mmseg's scope: every backbone parameter
    gets 6e-5 * 0.9 ** (25 - id), the heads 6e-5; no weight decay on norms and tables."""
    cfg = no_init(seg_config(SWIN_B_LRD))
    assert cfg.optim_wrapper.constructor == 'greenmim_mm.SwinLayerDecayOptimWrapperConstructor'
    model = build_segmentor(cfg)
    groups = param_groups(model, cfg.optim_wrapper)
    ids = set()
    for name, group in groups.items():
        layer = swin_layer_id(name, [2, 2, 18, 2])
        ids.add(layer)
        assert group['lr'] == pytest.approx(6e-5 * 0.9**(25 - layer)), name
        assert group['weight_decay'] == (0.0 if swin_no_weight_decay(name) else 0.01), name
    assert ids == set(range(26))
    assert any(n.startswith('decode_head.') for n in groups)
    assert all(g['lr'] == pytest.approx(6e-5) for n, g in groups.items()
               if not n.startswith('backbone.'))


def test_vit_layer_decay_rates_are_beits():
    """ViT-B UperNet with mmseg's LayerDecayOptimizerConstructor (the official recipe's BEiT
    constructor): 4e-4 * 0.65 ** (13 - id) with BEiT's layer ids; no weight decay on 1-D
    parameters and biases (narrow width: the rule depends on names only)."""
    cfg = small_vit(no_init(seg_config(VIT_B)))
    model = build_segmentor(cfg)
    groups = param_groups(model, cfg.optim_wrapper)
    ids = set()
    for name, group in groups.items():
        layer = beit_layer_id(name, 12)
        ids.add(layer)
        param = dict(model.named_parameters())[name]
        assert group['lr'] == pytest.approx(4e-4 * 0.65**(13 - layer)), name
        assert group['weight_decay'] == (0.0 if beit_no_weight_decay(name, param) else 0.05), name
    assert ids == set(range(14))


def test_demo_layer_decay_rates():
    """The nano demo (depths 2-2-2-2): lr 1e-3 * 0.9 ** (9 - id) for every backbone parameter,
    10 times the top rate (1e-2) for the decode and auxiliary heads."""
    cfg = no_init(seg_config(DEMO))
    model = build_segmentor(cfg)
    groups = param_groups(model, cfg.optim_wrapper)
    for name, group in groups.items():
        head = name.startswith(('decode_head.', 'auxiliary_head.'))
        rate = 1e-3 * 0.9**(9 - swin_layer_id(name, [2] * 4)) * (10.0 if head else 1.0)
        assert group['lr'] == pytest.approx(rate, rel=1e-6), name


# ----------------------------------------------------------------------------- demo data
@pytest.fixture(scope='module')
def seg_data(demo_data_factory):
    return demo_data_factory('seg_data', train_per_class=2, val_per_class=1, det_train=16,
                             det_val=8)


@pytest.mark.parametrize('split', ('train', 'val'))
def test_demo_masks_are_the_annotated_shapes(seg_data, split):
    """ade/ holds the detection images again and, per pixel, 1 + the COCO category of the
    polygon covering it (pycocotools' rasterisation of the same annotation) or 1 for background;
    the masks match the drawn pixels exactly."""
    from pycocotools.coco import COCO
    coco = COCO(f'{seg_data}/coco/annotations/instances_{split}.json')
    ade = demo_data.SEG_SPLITS[split]
    names = sorted(os.listdir(f'{seg_data}/ade/images/{ade}'))
    assert names == sorted(img['file_name'] for img in coco.dataset['images'])
    assert names == sorted(os.listdir(f'{seg_data}/ade/annotations/{ade}'))
    for img in coco.dataset['images']:
        name = img['file_name']
        seg = np.asarray(Image.open(f'{seg_data}/ade/annotations/{ade}/{name}'))
        assert seg.dtype == np.uint8 and seg.shape == (img['height'], img['width'])
        ref = np.ones_like(seg)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img['id'])):
            ref[coco.annToMask(ann) > 0] = 1 + ann['category_id']
        # pycocotools rounds polygon edges differently from the pixel-centre rule: a sliver
        assert (seg != ref).mean() < 0.01
        image = np.asarray(Image.open(f'{seg_data}/ade/images/{ade}/{name}'))
        assert np.array_equal(image, np.asarray(Image.open(f'{seg_data}/coco/{split}/{name}')))
        for label in np.unique(seg[seg > 1]):  # each shape is one flat colour
            assert len(np.unique(image[seg == label].reshape(-1, 3), axis=0)) <= \
                len(coco.getAnnIds(imgIds=img['id']))


def test_majority_class_baseline_is_brute_force(seg_data):
    """demo_data.majority_class_miou: the mIoU of predicting the most frequent class everywhere,
    scored by mmseg's own IoUMetric on the validation masks."""
    from mmseg.evaluation import IoUMetric
    ann_dir = f'{seg_data}/ade/annotations/validation'
    miou, freq = demo_data.majority_class_miou(ann_dir)
    assert freq.shape == (6, ) and freq.sum() == pytest.approx(1.0)
    metric = IoUMetric(iou_metrics=['mIoU'])
    metric.dataset_meta = dict(classes=demo_data.SEG_CLASSES)
    majority = int(np.argmax(freq))
    for path in sorted(Path(ann_dir).glob('*.png')):
        gt = torch.from_numpy(np.asarray(Image.open(path)).astype(np.int64)) - 1
        gt[gt < 0] = 255  # reduce_zero_label
        metric.process([], [dict(pred_sem_seg=dict(data=torch.full_like(gt, majority)[None]),
                                 gt_sem_seg=dict(data=gt[None]))])
    # mmseg averages over the classes present (nan for absent ones)
    present = int((freq > 0).sum())
    assert metric.compute_metrics(metric.results)['mIoU'] == pytest.approx(
        round(miou * 6 / present, 2), abs=0.01)


# ----------------------------------------------------------------------------- end to end
def demo_seg_cfg(data, converted, work, max_iters):
    cfg = seg_config(DEMO)
    ade = f'{data}/ade/'
    cfg.merge_from_dict({
        'work_dir': str(work), 'model.backbone.init_cfg.checkpoint': converted,
        'train_dataloader.dataset.data_root': ade, 'val_dataloader.dataset.data_root': ade,
        'test_dataloader.dataset.data_root': ade, 'train_cfg.max_iters': max_iters,
        'train_cfg.val_interval': max_iters, 'default_hooks.checkpoint.interval': max_iters,
        'train_dataloader.batch_size': 4})
    cfg.param_scheduler = None  # constant lr for these few iterations
    return cfg


def test_pretrain_convert_segment(seg_data, tmp_path, load_tool):
    """Demo GreenMIM pre-training (1 epoch) -> tools/convert_checkpoint.py -> the UperNet demo:
    the converted weights load strictly, a few iterations train, mIoU is evaluated."""
    from greenmim_mm.apis import launch
    convert_checkpoint = load_tool('convert_checkpoint')
    launch.main_train([str(PRETRAIN_DEMO), '--work-dir', str(tmp_path / 'pt'), '--cfg-options',
                       'train_cfg.max_epochs=1', 'train_dataloader.batch_size=5',
                       f'train_dataloader.dataset.data_root={seg_data}/'])
    converted = str(tmp_path / 'backbone_converted.pth')
    assert convert_checkpoint.main(['--src', 'greenmim_mm', str(tmp_path / 'pt' / 'epoch_1.pth'),
                                    converted]) == 0
    DefaultScope._instance_dict.clear()
    cfg = demo_seg_cfg(seg_data, converted, tmp_path / 'seg', max_iters=4)
    model = build_segmentor(cfg)
    model.init_weights()
    assert_loaded(model, converted, ('norm0.', 'norm1.', 'norm2.'))
    DefaultScope._instance_dict.clear()
    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.test()
    assert 0.0 <= metrics['mIoU'] <= 100.0 and 0.0 <= metrics['aAcc'] <= 100.0
    assert (tmp_path / 'seg' / 'iter_4.pth').is_file()


@pytest.mark.skipif(not Path(sys.executable).with_name('mim').exists(),
                    reason='openmim not installed')
def test_mim_train_runs_the_segmentation_demo_from_another_directory(seg_data, tmp_path):
    """`mim train greenmim_mm upernet_greenswin-nano_demo_128px.py` from an unrelated directory
    (random init, 2 iterations)."""
    ade = f'{seg_data}/ade/'
    options = ['model.backbone.init_cfg=None', 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
               'default_hooks.checkpoint.interval=2', 'train_dataloader.batch_size=2'] + [
        f'{k}.dataset.data_root={ade}' for k in ('train_dataloader', 'val_dataloader',
                                                 'test_dataloader')]
    work = tmp_path / 'work'
    run = subprocess.run([str(Path(sys.executable).with_name('mim')), 'train', 'greenmim_mm',
                          DEMO.name, '--work-dir', str(work), '--cfg-options'] + options,
                         cwd=tmp_path, env=dict(os.environ, PYTHONUNBUFFERED='1'),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (work / 'iter_2.pth').is_file()
    assert 'mIoU' in run.stdout + run.stderr

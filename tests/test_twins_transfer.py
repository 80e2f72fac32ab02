"""Twins-SVT transfer: converters (timm-twins, official-twins), GreenMIM pre-training with the
Twins backbone, fine-tuning / Mask R-CNN configs, and the demo chain pre-train -> convert ->
fine-tune / detect on generated data.

References: timm's own ``Twins`` (random weights) for ``timm-twins``; for ``official-twins`` the
same timm model with its PEGs replaced by the official GreenMIM PEG written here (depthwise conv
without the residual). Tolerance fp32 1e-5 (a few ulps through 8 layers).
"""
import math
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope, init_default_scope
from mmengine.runner import Runner

import greenmim_mm  # noqa: F401
from greenmim_mm.converters import ConversionError, convert_checkpoint
from greenmim_mm.models import GreenTwinsSVT
from greenmim_mm.registry import MODELS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PRETRAIN_L = osp.join(ROOT, 'configs', 'pretrain',
                      'greenmim_twins-svt-large_8xb256-amp-800e_in1k-224px.py')
PRETRAIN_DEMO = osp.join(ROOT, 'configs', 'pretrain', 'greenmim_twins-nano_demo_128px.py')
FT_L = osp.join(ROOT, 'configs', 'finetune', 'greentwins-svt-large_16xb64_in1k-224px.py')
FT_DEMO = osp.join(ROOT, 'configs', 'finetune', 'greentwins-nano_greenmim-pt_demo-cls_128px.py')
DET_L = osp.join(ROOT, 'configs', 'detection', 'mask-rcnn_greentwins-svt-l_fpn_1x_coco.py')
DET_DEMO = osp.join(ROOT, 'configs', 'detection', 'mask-rcnn_greentwins-nano_fpn_demo_128px.py')
TINY = dict(embed_dims=[16, 32, 32, 64], depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
            mlp_ratios=[2, 2, 2, 2], sr_ratios=[8, 4, 2, 1])


@pytest.fixture(autouse=True)
def _fresh_scope():
    yield
    DefaultScope._instance_dict.clear()


# ----------------------------------------------------------------------------- converters
def timm_twins():
    """timm's Twins-SVT (LSA windows 7) at TINY size, every parameter randomised."""
    from timm.models.twins import Twins
    torch.manual_seed(0)
    model = Twins(patch_size=4, num_classes=10, wss=[7] * 4, **TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def ours_for_timm(state_dict):
    """Our backbone in timm's configuration (qkv bias, final norm, LN eps 1e-6 in blocks)."""
    model = GreenTwinsSVT(arch=dict(TINY, patch_sizes=[4, 2, 2, 2], strides=[4, 2, 2, 2],
                                    window_sizes=[7] * 4),
                          qkv_bias=True, norm_after_stage=[False, False, False, True],
                          norm_cfg=dict(type='LN', eps=1e-6))
    model.load_state_dict({k[len('backbone.'):]: v for k, v in state_dict.items()}, strict=True)
    for stage in model.stages:  # timm's GSA norm keeps LayerNorm's default eps (1e-5)
        for layer in stage[1::2]:
            if hasattr(layer.attn, 'norm'):
                layer.attn.norm.eps = 1e-5
    return model.eval()


def test_timm_twins_converts_to_equal_outputs():
    timm_model = timm_twins()
    sd, notes = convert_checkpoint(timm_model.state_dict(), 'timm-twins')
    assert any('head' in n for n in notes) and any('eps 1e-6' in n for n in notes)
    ours = ours_for_timm(sd)
    x = torch.randn(2, 3, 224, 224)  # maps 56/28/14/7: no LSA padding (timm pads unmasked)
    with torch.no_grad():
        ref = timm_model.forward_features(x)
        out = ours(x)[-1].flatten(2).transpose(1, 2)
    assert (out - ref).abs().max().item() <= 1e-5


class OfficialPEG(torch.nn.Module):
    """Official GreenMIM's PEG (modeling/green_twins_models.py): depthwise 3x3 conv, no residual."""

    def __init__(self, conv):
        super().__init__()
        self.proj = torch.nn.Sequential(conv)

    def forward(self, x, size):
        b, n, c = x.shape
        return self.proj(x.transpose(1, 2).view(b, c, *size)).flatten(2).transpose(1, 2)


SPCONV_KEY = r'(patch_embeds\.[123]\.proj|blocks\.\d+\.\d+\.attn\.sr)\.weight$'


def official_state_dict(model, layout='spconv'):
    """The official checkpoint's encoder weights: its stage patch embeddings 1-3 and GSA ``sr``
    convs are spconv ``SparseConv2d``, stored (out, kh, kw, in) by spconv >= 2.2 ('spconv');
    'torch': as torch stores them (a re-saved file); 'kernel-first': spconv < 2.2's
    (kh, kw, out, in)."""
    import re
    sd = {}
    for k, v in model.state_dict().items():
        if re.match(SPCONV_KEY, k) and layout != 'torch':
            v = v.permute(0, 2, 3, 1) if layout == 'spconv' else v.permute(2, 3, 0, 1)
        sd[k] = v.contiguous()
    return sd


@pytest.mark.parametrize('layout', ['spconv', 'torch'])
def test_official_twins_folds_the_missing_peg_residual(layout):
    official = timm_twins()
    for i, peg in enumerate(official.pos_block):
        official.pos_block[i] = OfficialPEG(peg.proj[0])
    encoder = official_state_dict(official, layout)
    ckpt = {'model': {**{f'encoder.{k}': v for k, v in encoder.items()},
                      'mask_token': torch.zeros(1, 1, 8), 'decoder_pred.weight': torch.zeros(2, 8)}}
    sd, notes = convert_checkpoint(ckpt, 'official-twins')
    assert any('folded into 4 kernels' in n for n in notes)
    # 3 patch embeddings + the GSA blocks of stages 0-2 (sr 8/4/2; stage 3 has sr 1, no conv)
    assert any('6 spconv weights' in n for n in notes) == (layout == 'spconv')
    assert any('decoder_pred' in n and 'mask_token' in n for n in notes)
    ours = ours_for_timm(sd)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = official.forward_features(x)
        out = ours(x)[-1].flatten(2).transpose(1, 2)
        unfolded = timm_twins().forward_features(x)  # same weights, with Twins' residual
    assert (out - ref).abs().max().item() <= 1e-5
    assert (unfolded - ref).abs().max().item() > 1e-2  # the residual really matters


def test_official_twins_refuses_kernel_first_spconv_weights():
    encoder = official_state_dict(timm_twins(), 'kernel-first')
    # named as in the file; the first (sorted) is stage 0's GSA kernel, square: (8, 8, 16, 16)
    with pytest.raises(ConversionError, match=r'encoder\.blocks\.0\.1\.attn\.sr\.weight: cannot '
                       r'tell the sparse-convolution weight layout of shape \(8, 8, 16, 16\)'):
        convert_checkpoint({'model': {f'encoder.{k}': v for k, v in encoder.items()}},
                           'official-twins')


def test_twins_converter_errors():
    with pytest.raises(ConversionError, match='original Twins keys.*looks like --src greenmim_mm'):
        convert_checkpoint({'patch_embeds.0.projection.weight': torch.zeros(1)}, 'timm-twins')
    bad = dict(timm_twins().state_dict(), **{'blocks.0.0.attn.rel_bias': torch.zeros(1)})
    with pytest.raises(ConversionError, match="no counterpart in mmpretrain's SVT.*rel_bias"):
        convert_checkpoint(bad, 'timm-twins')
    ours = {f'backbone.{k}': v for k, v in GreenTwinsSVT(arch='nano').state_dict().items()}
    with pytest.raises(ConversionError, match='Swin only'):
        convert_checkpoint({'state_dict': ours}, 'greenmim_mm', window=7)


# ----------------------------------------------------------------------------- pre-training
def test_greenmim_takes_twins_unchanged():
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='GreenMIM',
        backbone=dict(type='GreenTwinsSVT', arch='nano', qkv_bias=True,
                      norm_after_stage=[False, False, False, True], out_indices=(3, ),
                      attn_backend='sdpa'),
        neck=dict(type='MAEUnitDecoder', in_channels=256, embed_dims=32, depth=1, num_heads=2),
        head=dict(type='UnitReconstructionHead', loss='mse', norm_pix=True),
        data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                               to_rgb=True)))
    model.init_weights()
    assert model.unit == 32
    loss = model.loss(torch.randn(2, 3, 128, 96))['loss']
    loss.backward()
    assert torch.isfinite(loss)
    assert model.backbone.position_encodings[0].proj.weight.grad.abs().sum() > 0


def test_twins_l_pretrain_config_is_the_papers():
    cfg = Config.fromfile(PRETRAIN_L)
    init_default_scope('greenmim_mm')
    backbone = MODELS.build(cfg.model.backbone)
    assert isinstance(backbone, GreenTwinsSVT)
    assert backbone.embed_dims == [128, 256, 512, 1024] and backbone.depths == [2, 2, 18, 2]
    assert backbone.num_heads == [4, 8, 16, 32] and backbone.window_sizes == [7] * 4
    assert backbone.sr_ratios == [8, 4, 2, 1] and backbone.mask_unit == 32
    swin_b = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain',
                                      'greenmim_swin-base-w7_8xb256-amp-800e_in1k-224px.py'))
    for key in ('optim_wrapper', 'param_scheduler', 'train_dataloader', 'auto_scale_lr'):
        assert cfg[key] == swin_b[key], key  # same recipe as Swin-B
    assert cfg.model.neck == swin_b.model.neck and cfg.model.mask_ratio == 0.75


# ----------------------------------------------------------------------------- transfer configs
def test_finetune_config_builds_and_classifies():
    from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS
    from mmpretrain.structures import DataSample
    cfg = Config.fromfile(FT_L)
    init_default_scope('mmpretrain')
    model = MMPRETRAIN_MODELS.build(cfg.model).eval()
    assert isinstance(model.backbone, GreenTwinsSVT) and model.backbone.embed_dims[-1] == 1024
    assert cfg.model.backbone.init_cfg.prefix == 'backbone.'
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224), [DataSample()], mode='predict')
    assert out[0].pred_score.shape == (1000, )


def test_mask_rcnn_config_builds_and_runs_forward():
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmdet.structures import DetDataSample
    cfg = Config.fromfile(DET_L)
    init_default_scope('mmdet')
    model = MMDET_MODELS.build(cfg.model).eval()
    assert isinstance(model.backbone, GreenTwinsSVT) and model.backbone.out_indices == (0, 1, 2, 3)
    sample = DetDataSample(metainfo=dict(img_shape=(160, 224), ori_shape=(160, 224),
                                         scale_factor=(1.0, 1.0), batch_input_shape=(160, 224)))
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 160, 224))
        result = model.predict(torch.randn(1, 3, 160, 224), [sample])
    assert [f.shape[-1] for f in feats] == [56, 28, 14, 7, 4]
    assert result[0].pred_instances.bboxes.shape[-1] == 4


@pytest.mark.parametrize('path', [PRETRAIN_L, PRETRAIN_DEMO, FT_L, FT_DEMO, DET_L, DET_DEMO])
def test_twins_configs_save_checkpoints_safely(path):
    hook = Config.fromfile(path).default_hooks.checkpoint.type
    assert hook in ('SafeCheckpointHook', 'greenmim_mm.SafeCheckpointHook')


# ----------------------------------------------------------------------------- demo chain
@pytest.fixture(scope='module')
def tiny_data(demo_data_factory):
    return demo_data_factory('twins_transfer_data', train_per_class=4, val_per_class=2,
                             det_train=4, det_val=2)


@pytest.fixture(scope='module')
def converted(tiny_data, tmp_path_factory, load_tool):
    """One epoch of the Twins demo pre-training (tools/train.py), converted to backbone weights
    (tools/convert_checkpoint.py)."""
    from greenmim_mm.apis import launch
    convert_checkpoint = load_tool('convert_checkpoint')
    work = tmp_path_factory.mktemp('twins_pt')
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
    assert ref and set(k[len('backbone.'):] for k in ref) <= set(own)
    for key, value in ref.items():
        assert torch.equal(own[key[len('backbone.'):]], value), key


def test_demo_pretrain_convert_finetune(tiny_data, converted, tmp_path):
    from greenmim_mm.apis import launch
    from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS
    argv = [FT_DEMO, '--work-dir', str(tmp_path), '--cfg-options',
            f'model.backbone.init_cfg.checkpoint={converted}', 'train_cfg.max_epochs=1',
            'default_hooks.checkpoint.interval=100', 'train_dataloader.batch_size=8']
    argv += [f'{split}_dataloader.dataset.data_root={tiny_data}/'
             for split in ('train', 'val', 'test')]
    cfg = launch.build_train_config(launch.parse_train_args(argv))
    assert_backbone_is(cfg, MMPRETRAIN_MODELS, converted)
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert 0.0 <= runner.test()['accuracy/top1'] <= 100.0


def test_demo_pretrain_convert_mask_rcnn(tiny_data, converted, tmp_path):
    from mmdet.registry import MODELS as MMDET_MODELS
    cfg = Config.fromfile(DET_DEMO)
    coco = f'{tiny_data}/coco/'
    cfg.merge_from_dict({
        'work_dir': str(tmp_path),
        'model.backbone.init_cfg.checkpoint': converted,
        'train_dataloader.batch_size': 2,
        'train_dataloader.dataset.data_root': coco,
        'test_dataloader.dataset.data_root': coco,
        'test_evaluator.ann_file': coco + 'annotations/instances_val.json',
        'train_cfg.max_epochs': 1, 'default_hooks.checkpoint.interval': 100,
        'model.test_cfg.rcnn.score_thr': 0.0,
    })
    cfg.param_scheduler = None
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    assert_backbone_is(cfg, MMDET_MODELS, converted)
    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.test()
    assert all(math.isfinite(metrics[k]) for k in metrics if k.startswith('coco/bbox_mAP'))

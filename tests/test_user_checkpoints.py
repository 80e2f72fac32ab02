"""Checkpoints users bring (issue 10 point 4): mmpretrain SimMIM checkpoints, the older Swin
layout (one final ``norm.*``, ``attn_mask`` buffers), and strict pretrained loading.

References: mmpretrain's own models — ``SimMIM`` with ``SimMIMSwinTransformer`` (its dense
forward), ``SwinTransformer`` loading the older layout through its own ``_load_from_state_dict``
and resizing tables through its own load hook. Tiny random-weight Swins, fp32 <= 1e-5.
"""
import logging
import os.path as osp
import re
from collections import OrderedDict

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmpretrain.models import SwinTransformer as MMPretrainSwin

from greenmim_mm.converters import ConversionError, convert_checkpoint
from greenmim_mm.models import GreenSwinTransformer
from greenmim_mm.models.backbones.pretrained import PretrainedLoadError

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
NANO_CLS = osp.join(ROOT, 'configs', 'finetune', 'greenswin-nano_greenmim-pt_demo-cls_128px.py')
TINY = dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])
SWIN = dict(arch=TINY, img_size=64, window_size=2, drop_path_rate=0.0)  # maps 16, 8, 4, 2
TOL = 1e-5


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (norm weights around 1), so nothing equals its initial value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_weight = p.dim() == 1 and 'norm' in name and name.endswith('weight')
            p.copy_(0.1 * torch.randn(p.shape, generator=gen) + (1.0 if is_norm_weight else 0.0))
    return model.eval()


def green(**kw) -> GreenSwinTransformer:
    return GreenSwinTransformer(**{**SWIN, 'attn_backend': 'sdpa', **kw})


def assert_same_state(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def save(tmp_path, obj, name='ckpt.pth') -> str:
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path


# ------------------------------------------------------------------ (a) mmpretrain SimMIM
def mmpretrain_simmim():
    """mmpretrain's SimMIM (SimMIMSwinTransformer + linear decoder + L1 head), random weights."""
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    model = MODELS.build(dict(
        type='SimMIM',
        backbone=dict(type='SimMIMSwinTransformer', arch=TINY, img_size=64, drop_path_rate=0.0,
                      stage_cfgs=dict(block_cfgs=dict(window_size=2))),  # SimMIM's own spelling
        neck=dict(type='SimMIMLinearDecoder', in_channels=128, encoder_stride=32),
        head=dict(type='SimMIMHead', patch_size=4,
                  loss=dict(type='PixelReconstructionLoss', criterion='L1', channel=3)),
        data_preprocessor=dict(type='SelfSupDataPreprocessor', mean=[0, 0, 0], std=[1, 1, 1])))
    return randomize(model)


def test_mmpretrain_simmim_checkpoint_converts(tmp_path, load_tool, capsys):
    simmim = mmpretrain_simmim()
    state = simmim.state_dict()
    assert 'backbone.mask_token' in state and any(k.startswith('neck.') for k in state)
    src = save(tmp_path, {'meta': {'epoch': 1}, 'state_dict': state})
    out = str(tmp_path / 'converted.pth')
    tool = load_tool('convert_checkpoint')
    assert tool.main(['--src', 'greenmim_mm', src, out]) == 0  # refused before: mask_token
    assert 'mask_token' in capsys.readouterr().out  # reported as dropped
    converted = torch.load(out, weights_only=True)['state_dict']
    backbone = {k: v for k, v in state.items()
                if k.startswith('backbone.') and k != 'backbone.mask_token'}
    assert_same_state(converted, backbone)

    ours = green(init_cfg=dict(type='Pretrained', checkpoint=out, prefix='backbone.'))
    ours.init_weights()  # strict: every tensor present with its shape
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = simmim.backbone(x, mask=None)  # SimMIM's backbone without a mask: dense Swin
        got = ours.eval()(x)
    assert (got[0] - ref[0]).abs().max() <= TOL


# ------------------------------------------------------------------ (b) older Swin layout
def older_layout(sd: dict, prefix: str = '') -> dict:
    """A state dict as older mmpretrain/mmcls Swins saved it: one final ``norm.*`` instead of
    ``norm3.*`` and an ``attn_mask`` buffer in every shifted block; no version metadata."""
    old = {}
    for k, v in sd.items():
        old[prefix + ('norm.' + k[len('norm3.'):] if k.startswith('norm3.') else k)] = v.clone()
    for i in range(4):
        nw = max(1, (16 >> i) // 2) ** 2  # windows of stage i at 64 px, window 2
        old[f'{prefix}stages.{i}.blocks.1.attn.attn_mask'] = torch.zeros(nw, 4, 4)
    return old


def test_older_layout_loads_like_mmpretrains_swin():
    src = randomize(green()).state_dict()
    old = older_layout(src)
    assert 'norm.weight' in old and 'norm3.weight' not in old
    theirs = MMPretrainSwin(**SWIN)
    theirs.load_state_dict(dict(old), strict=True)  # mmpretrain remaps for its own class only
    ours = green()
    ours.load_state_dict(dict(old), strict=True)  # before: missing norm3.*, unexpected norm.*
    assert_same_state(ours.state_dict(), theirs.state_dict())
    assert_same_state(ours.state_dict(), src)


def test_older_layout_under_a_prefix_and_with_version_metadata():
    src = randomize(green()).state_dict()
    wrapped = torch.nn.ModuleDict({'backbone': green()})  # as inside ImageClassifier
    wrapped.load_state_dict(older_layout(src, 'backbone.'), strict=True)
    assert_same_state(wrapped.backbone.state_dict(), src)

    for version, remapped in ((1, True), (2, None), (3, False)):
        old = OrderedDict(older_layout(src))
        if version == 2:  # norm already renamed at version 2; only attn_mask is stale
            old = OrderedDict((k.replace('norm.', 'norm3.') if k.startswith('norm.') else k, v)
                              for k, v in old.items())
        old._metadata = OrderedDict({'': {'version': version}})
        for model in (green(), MMPretrainSwin(**SWIN)):
            if remapped is False:  # a current-version file with stale keys: both refuse it
                with pytest.raises(RuntimeError, match='Unexpected key'):
                    model.load_state_dict(old, strict=True)
            else:
                model.load_state_dict(old, strict=True)
                assert torch.equal(model.state_dict()['norm3.weight'], src['norm3.weight'])


def test_converter_accepts_the_older_layout():
    src = randomize(green()).state_dict()
    ckpt = {'state_dict': older_layout(src, 'backbone.')}
    sd, notes = convert_checkpoint(ckpt, 'greenmim_mm')  # refused before: norm.weight
    assert_same_state(sd, {f'backbone.{k}': v for k, v in src.items()})
    assert any('norm.* to norm3.*' in n for n in notes)
    assert any('attn_mask' in n for n in notes)
    clash = dict(ckpt['state_dict'], **{'backbone.norm3.weight': src['norm3.weight']})
    with pytest.raises(ConversionError, match='both the older final norm'):
        convert_checkpoint({'state_dict': clash}, 'greenmim_mm')


# ------------------------------------------------------------------ (c) strict pretrained loading
def swin_t_converted(tmp_path) -> str:
    """mmpretrain Swin-T weights (random), converted with ``--src greenmim_mm``."""
    swin_t = MMPretrainSwin(arch='tiny', drop_path_rate=0.0)
    ckpt = {'state_dict': {f'backbone.{k}': v for k, v in swin_t.state_dict().items()}}
    sd, _ = convert_checkpoint(ckpt, 'greenmim_mm')
    return save(tmp_path, {'state_dict': sd}, 'swin-t_converted.pth')


def test_wrong_architecture_in_the_nano_classifier_is_one_clear_error(tmp_path):
    """Converted Swin-T weights given to the nano demo classifier: one error naming the file and
    the mis-shaped keys (before: 119 'size mismatch' warnings, then training from random init)."""
    from greenmim_mm.registry import MODELS
    path = swin_t_converted(tmp_path)
    cfg = Config.fromfile(NANO_CLS)
    cfg.model.backbone.init_cfg.checkpoint = path
    init_default_scope('greenmim_mm')
    model = MODELS.build(cfg.model)
    with pytest.raises(PretrainedLoadError) as err:
        model.init_weights()
    msg = str(err.value)
    assert path in msg and 'GreenSwinTransformer' in msg and 'strict=False' in msg
    assert 'mis-shaped: patch_embed.projection.weight (file [96, 3, 4, 4], model [32, 3, 4, 4])' \
        in msg
    assert 'not in the model: stages.2.blocks.2.' in msg  # Swin-T's stage 2 has 6 blocks


def nano_checkpoint(tmp_path, drop=(), reshape=(), **kw):
    src = randomize(green(**kw))
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith(tuple(drop))}
    for key in reshape:
        sd[key] = torch.zeros(3)
    path = save(tmp_path, {'state_dict': {f'backbone.{k}': v for k, v in sd.items()}})
    return src.state_dict(), path


def test_missing_and_mis_shaped_keys_fail_unless_strict_false(tmp_path, caplog, monkeypatch):
    src, path = nano_checkpoint(tmp_path, drop=('stages.3.',),
                                reshape=('stages.0.blocks.0.norm1.bias', ))
    init = dict(type='Pretrained', checkpoint=path, prefix='backbone.')
    # missing: stage 3 except its index buffers (rebuilt by construction, see the class doc)
    missing = [k for k in src if k.startswith('stages.3.') and 'relative_position_index' not in k]
    with pytest.raises(PretrainedLoadError, match=rf'{re.escape(path)}.*1 mis-shaped: stages\.0\.blocks\.0\.'
                       rf'norm1\.bias \(file \[3\], model \[16\]\); {len(missing)} missing: '
                       r'stages\.3\.blocks\.0\.'):
        green(init_cfg=init).init_weights()

    torch.manual_seed(5)
    model = green(init_cfg=dict(init, strict=False))
    torch.manual_seed(5)
    fresh = green()
    torch.manual_seed(6)
    fresh.init_weights()  # what the tensors that are not loaded hold: the same random init
    fresh = fresh.state_dict()
    torch.manual_seed(6)
    from mmengine.logging import MMLogger
    monkeypatch.setattr(MMLogger, 'get_current_instance',
                        classmethod(lambda cls: logging.getLogger('test_user_checkpoints')))
    with caplog.at_level(logging.INFO, logger='test_user_checkpoints'):
        model.init_weights()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and 'partial load (strict=False)' in warnings[0].getMessage()
    loaded = model.state_dict()
    for k, v in loaded.items():
        skipped = k.startswith('stages.3.') or k == 'stages.0.blocks.0.norm1.bias'
        assert torch.equal(v, fresh[k] if skipped else src[k]), k


def test_what_a_strict_load_may_leave_out(tmp_path):
    """A pre-training checkpoint (output norm of the last stage only, a mask token) loads into a
    detection-style backbone with out_indices 0-3: norm0-2 keep their initial values."""
    src, path = nano_checkpoint(tmp_path, out_indices=(3, ))
    ckpt = torch.load(path, weights_only=True)
    ckpt['state_dict']['backbone.mask_token'] = torch.zeros(1, 1, 16)
    path = save(tmp_path, ckpt, 'with_mask_token.pth')
    model = green(out_indices=(0, 1, 2, 3),
                  init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    model.init_weights()
    state = model.state_dict()
    for k, v in src.items():
        assert torch.equal(state[k], v), k
    assert torch.equal(state['norm0.weight'], torch.ones(16))


def test_window_change_at_load_time_matches_mmpretrain(tmp_path):
    """mmpretrain's load hook resizes tables and drops the index buffers; the strict load accepts
    that (the index is rebuilt for the new window) and equals mmpretrain's own PretrainedInit."""
    _, path = nano_checkpoint(tmp_path, window_size=3, img_size=96)
    init = dict(type='Pretrained', checkpoint=path, prefix='backbone.')
    ours = green(window_size=4, img_size=128, init_cfg=init)
    theirs = MMPretrainSwin(**{**SWIN, 'window_size': 4, 'img_size': 128}, init_cfg=init)
    ours.init_weights()
    theirs.init_weights()
    assert_same_state(ours.state_dict(), theirs.state_dict())


def test_prefix_not_in_the_file_is_an_error(tmp_path):
    _, path = nano_checkpoint(tmp_path)
    with pytest.raises(PretrainedLoadError, match="no key starts with the prefix 'encoder.'"):
        green(init_cfg=dict(type='Pretrained', checkpoint=path, prefix='encoder')).init_weights()

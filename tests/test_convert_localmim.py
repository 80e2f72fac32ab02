"""Converter: LocalMIM checkpoints (ours, official Swin, official ViT) -> backbone weights.

References: our own model's backbone weights; a row-first 2x2 merge written here (the official
LocalMIM Swin's sparse PatchMerging, LocalMIM's official code); timm's Swin in the official layout with
the row-first merge (via test_convert_checkpoint's helpers); timm's ViT blocks for the ViT.
"""
import argparse

import pytest
import torch
import torch.nn.functional as F

from greenmim_mm.converters import ConversionError, convert_checkpoint
from greenmim_mm.models import GreenSwinTransformer
from test_convert_checkpoint import one_thread  # noqa: F401 (autouse: one intra-op thread)
from test_convert_checkpoint import (TINY, TOL, check_against_timm, convert, randomize,
                                     stripped, timm_to_microsoft, tiny_timm)
from test_localmim import tiny_localmim


# ---------------------------------------------------------------------------- ours
def test_ours_drops_decoders_targets_and_post_merge_norms(tmp_path):
    model = tiny_localmim()
    state = model.state_dict()
    _, out = convert(tmp_path, 'localmim', {'state_dict': state, 'meta': {'epoch': 1}})
    sd = stripped(out)
    backbone = {k[9:]: v for k, v in state.items() if k.startswith('backbone.')}
    assert set(backbone) - set(sd) == {f'norm{i}.{p}' for i in range(3)
                                       for p in ('weight', 'bias')}
    assert all(torch.equal(sd[k], backbone[k]) for k in sd)
    # loads strictly into the downstream backbone (norm3 only, outputs before merging)
    down = GreenSwinTransformer(arch=TINY, img_size=96, window_size=3, out_indices=(3, ))
    down.load_state_dict(sd, strict=True)


# ---------------------------------------------------------------------------- official Swin
def row_first_merge(x, norm_w, norm_b, reduction):
    """The official LocalMIM Swin merge: 2x2 neighbours (0,0),(0,1),(1,0),(1,1) concatenated
    channel blocks in that order, LayerNorm, Linear. x (B, H, W, C) -> (B, H/2 * W/2, 2C)."""
    cat = torch.cat([x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]], -1)
    cat = F.layer_norm(cat, cat.shape[-1:], norm_w, norm_b, eps=1e-5)
    return (cat @ reduction.t()).flatten(1, 2)


def official_localmim_swin(encoder: dict) -> dict:
    """A LocalMIM Swin pre-training checkpoint around Microsoft-layout encoder weights."""
    weights = {f'encoder.{k}': v for k, v in encoder.items()  # its `norm` is the per-head list
               if not k.startswith(('head.', 'norm.'))}
    for k, dims in enumerate([32, 64, 128, 128]):
        weights[f'encoder.norm.{k}.weight'] = torch.ones(dims)
        weights[f'encoder.norm.{k}.bias'] = torch.zeros(dims)
        weights[f'decoder.{k}.decoder_embed.weight'] = torch.randn(16, dims)
        weights[f'hog_enc.{k}.conv.weight'] = torch.randn(2, 1, 3, 3)
        weights[f'hog_enc.{k}.conv.bias'] = torch.randn(2)
    return {'model': weights, 'epoch': 399, 'args': argparse.Namespace(hog_bias=True)}


def test_official_swin_merge_is_the_row_first_reference(tmp_path):
    """Random row-first merge weights in an official checkpoint: after conversion our (mmcv)
    PatchMerging computes the row-first reference merge."""
    torch.manual_seed(0)
    encoder = timm_to_microsoft(tiny_timm(), g1=True)
    gen = torch.Generator().manual_seed(1)
    for name in ('norm.weight', 'norm.bias', 'reduction.weight'):
        key = f'layers.0.downsample.{name}'
        encoder[key] = torch.randn(encoder[key].shape, generator=gen) * 0.3 + (
            1 if name == 'norm.weight' else 0)
    _, out = convert(tmp_path, 'localmim-official-swin', official_localmim_swin(encoder))
    ours = GreenSwinTransformer(arch=TINY, window_size=7, out_indices=(3, ))
    result = ours.load_state_dict(stripped(out), strict=False)
    assert sorted(result.missing_keys) == ['norm3.bias', 'norm3.weight']
    assert not result.unexpected_keys
    x = torch.randn(2, 8, 10, 16)
    ref = row_first_merge(x, encoder['layers.0.downsample.norm.weight'],
                          encoder['layers.0.downsample.norm.bias'],
                          encoder['layers.0.downsample.reduction.weight'])
    with torch.no_grad():
        got = ours.stages[0].downsample(x.flatten(1, 2), (8, 10))[0]
    assert (got - ref).abs().max().item() <= TOL


def test_official_swin_whole_model_matches_timm_and_drops_head_parts(tmp_path):
    torch.manual_seed(0)
    model = tiny_timm()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = model.forward_features(x)
    sd, notes = convert_checkpoint(official_localmim_swin(timm_to_microsoft(model, g1=True)),
                                   'localmim-official-swin')
    dropped = notes[0]
    assert 'decoder.*' in dropped and 'hog_enc.*' in dropped and 'encoder.*' in dropped
    assert not any(k.startswith('backbone.norm') for k in sd)  # per-head norms are gone
    ours = GreenSwinTransformer(arch=TINY, window_size=7, out_indices=(3, )).eval()
    missing = ours.load_state_dict({k[9:]: v for k, v in sd.items()}, strict=False)
    assert sorted(missing.missing_keys) == ['norm3.bias', 'norm3.weight']
    assert not missing.unexpected_keys
    with torch.no_grad():  # no norm3 in the checkpoint: ours before it, then timm's norm
        feat, hw = ours.patch_embed(x)
        for stage in ours.stages:
            feat, hw = stage(feat, hw)
        feat = model.norm(feat.view(2, 7, 7, -1))
    assert (feat - ref).abs().max().item() <= TOL


# ---------------------------------------------------------------------------- official ViT
def test_official_vit_to_mmpretrain_vit_matches_timm_blocks():
    from mmpretrain.models import VisionTransformer
    from timm.models.vision_transformer import VisionTransformer as TimmViT
    torch.manual_seed(0)
    timm_vit = randomize(TimmViT(img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=2,
                                 mlp_ratio=2.0, num_classes=0), matrices=True)
    weights = {k: v for k, v in timm_vit.state_dict().items() if not k.startswith('norm.')}
    for k in range(4):
        weights[f'norm.{k}.weight'], weights[f'norm.{k}.bias'] = torch.ones(32), torch.zeros(32)
        weights[f'decoder.{k}.decoder_pred.weight'] = torch.randn(27, 64, 1, 1)
        weights[f'hog_enc.{k}.conv.weight'] = torch.randn(2, 1, 3, 3)
    weights['mask_token'] = torch.zeros(1, 1, 32)
    sd, notes = convert_checkpoint({'model': weights}, 'localmim-official-vit')
    assert 'norm.*' in notes[0] and 'decoder.*' in notes[0] and 'hog_enc.*' in notes[0]
    ours = VisionTransformer(arch=dict(embed_dims=32, num_layers=4, num_heads=2,
                                       feedforward_channels=64), img_size=64, patch_size=16,
                             final_norm=False, out_type='raw', out_indices=[1, 3])
    ours.eval()  # (mmpretrain's ViT.train returns None)
    ours.load_state_dict({k[9:]: v for k, v in sd.items()}, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = timm_vit._pos_embed(timm_vit.patch_embed(x))
        refs = []
        for blk in timm_vit.blocks:
            ref = blk(ref)
            refs.append(ref)
        got = ours(x)
    assert (got[0] - refs[1]).abs().max().item() <= TOL
    assert (got[1] - refs[3]).abs().max().item() <= TOL


def test_official_vit_errors():
    with pytest.raises(ConversionError, match='localmim-official-vit: unrecognised layout'):
        convert_checkpoint({'model': {'layers.0.weight': torch.zeros(1)}},
                           'localmim-official-vit')
    with pytest.raises(ConversionError, match='no counterpart in the mmpretrain ViT'):
        convert_checkpoint({'model': {'patch_embed.proj.weight': torch.zeros(1),
                                      'blocks.0.attn.qkv.weight': torch.zeros(1),
                                      'blocks.0.ls1.gamma': torch.zeros(1)}},
                           'localmim-official-vit')
    with pytest.raises(ConversionError, match='has no windows'):
        convert_checkpoint({'model': {}}, 'localmim-official-vit', window=7)

"""LocalMIM on GreenTwinsSVT (issue 12 point 2): the outputs after each stage's patch embedding
(``out_after_downsample``) on both paths, and a LocalMIM training step on Twins.

Sparse reference: test_green_twins.reference_sparse (dense SVT with every invisible token zero at
every convolution input and excluded from every attention key) with ``after_embed=True``: the
stage-(i+1) patch-embedding output gathered at the visible positions of stage i+1's grid.
Dense reference: mmpretrain's own ``SVT`` with forward hooks on its patch embeddings.
Tolerances: fp64 1e-10 (the same arithmetic up to summation order), fp32 1e-5 (a few ulps through
8 layers).
"""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmpretrain.models import SVT

import greenmim_mm  # noqa: F401
from greenmim_mm.models import GreenTwinsSVT
from greenmim_mm.models.algorithms import LocalMIM, draw_unit_mask
from greenmim_mm.registry import MODELS
from test_convert_checkpoint import one_thread  # noqa: F401 (autouse: one intra-op thread)
from test_green_twins import TINY, make_mask, make_model, max_diff, reference_sparse

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
NORMS = [False, True, False, True]


def test_feature_info_after_embed_and_default_unchanged():
    after = make_model(out_after_downsample=True)
    assert after.out_strides == [8, 16, 32, 32]
    assert [(f['num_chs'], f['stage'], f['module']) for f in after.feature_info] == [
        (32, 1, 'patch_embeds.1'), (32, 2, 'patch_embeds.2'), (64, 3, 'patch_embeds.3'),
        (64, 3, 'norm_after_stage3')]
    assert make_model().out_strides == [4, 8, 16, 32]
    assert list(after.state_dict()) == list(make_model().state_dict())


def test_dense_after_embed_equals_mmpretrain_svt_hooks():
    """224 px, window 7: maps 56/28/14/7, no LSA padding, so mmpretrain's SVT is the reference."""
    ours = make_model(torch.float64, out_after_downsample=True)
    theirs = SVT(arch=TINY, out_indices=(0, 1, 2, 3), qkv_bias=True,
                 norm_after_stage=NORMS).double().eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    embeds = {}
    for i in (1, 2, 3):
        theirs.patch_embeds[i].register_forward_hook(
            lambda m, a, out, i=i: embeds.__setitem__(i, out))
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        last = theirs(x)[-1]
        got = ours(x)
    ref = []
    for i in (1, 2, 3):
        t, (h, w) = embeds[i]
        ref.append(t.transpose(1, 2).reshape(2, -1, h, w))
    assert [tuple(g.shape) for g in got] == [(2, 32, 28, 28), (2, 32, 14, 14), (2, 64, 7, 7),
                                             (2, 64, 7, 7)]
    assert max_diff(got, ref + [last]) <= 1e-10


@pytest.mark.parametrize('ratio', [0.5, 0.75, 'one'])
@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_sparse_after_embed_equals_masked_dense_reference(ratio, dtype, tol):
    model = make_model(dtype, out_after_downsample=True)
    x = torch.randn(2, 3, 224, 224, dtype=dtype)
    mask = make_mask((224, 224), ratio, seed=3)
    with torch.no_grad():
        sparse = model(x, mask=mask)
        ref = reference_sparse(model, x, mask, after_embed=True)
    n = int((~mask).sum())
    assert [tuple(t.shape[1:]) for t in sparse] == [(16 * n, 32), (4 * n, 32), (n, 64), (n, 64)]
    assert max_diff(sparse, ref) <= tol


def test_sparse_after_embed_at_ratio_zero_equals_dense_path():
    model = make_model(torch.float64, out_after_downsample=True)
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        sparse = model(x, mask=torch.zeros(7, 7, dtype=torch.bool))
        dense = [t.flatten(2).transpose(1, 2) for t in model(x)]
    assert max_diff(sparse, dense) <= 1e-10


def nano_twins_localmim():
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain',
                                   'localmim_twins-nano_demo_128px.py'))
    cfg.model.backbone.attn_backend = 'sdpa'
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return cfg, model


def test_nano_twins_demo_config_trains_every_parameter_of_the_used_path():
    """One LocalMIM step on Twins: finite loss per head, each head's loss is its decoder on the
    mask repeated to its grid, and every backbone and decoder parameter gets a gradient."""
    cfg, model = nano_twins_localmim()
    assert isinstance(model, LocalMIM) and isinstance(model.backbone, GreenTwinsSVT)
    assert cfg.train_cfg.max_epochs == 6
    assert model.strides == [8, 16, 32, 32] and model.grid_factors == [4, 2, 1, 1]
    model.base_seed = 4
    x = torch.randn(2, 3, 128, 128)
    losses = model.loss(x)
    assert sorted(losses) == ['loss_0', 'loss_1', 'loss_2', 'loss_3']
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    mask = draw_unit_mask((4, 4), 0.75, 4, 0, 0)
    with torch.no_grad():
        feats = model.backbone(x, mask=mask)
        for k, (f, cells) in enumerate(zip(feats, model.head_masks(mask))):
            ref = model.head[k].loss(model.neck[k](f, cells), x, cells)
            torch.testing.assert_close(losses[f'loss_{k}'], ref, rtol=1e-6, atol=0)
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert missing == []


def test_converter_keeps_the_whole_svt_backbone():
    """``--src localmim`` on a LocalMIM-Twins checkpoint: no head norm to drop (none was added),
    so the backbone is exactly mmpretrain's SVT state dict; decoders and heads are dropped."""
    from greenmim_mm.converters import localmim_backbone
    cfg, model = nano_twins_localmim()
    sd, dropped = localmim_backbone({'state_dict': model.state_dict()})
    ref = {k[len('backbone.'):]: v for k, v in model.state_dict().items()
           if k.startswith('backbone.')}
    assert sorted(sd) == sorted(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)
    assert dropped and all(not k.startswith('backbone.') for k in dropped)
    assert cfg.model.backbone.arch == 'nano'
    svt = SVT(arch=GreenTwinsSVT.arch_zoo['nano'], qkv_bias=True,
              norm_after_stage=[False, False, False, True], norm_cfg=dict(type='LN', eps=1e-6))
    svt.load_state_dict(sd, strict=True)

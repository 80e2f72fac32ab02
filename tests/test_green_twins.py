"""GreenTwinsSVT: state dict, dense path (with the LSA padding fix), and the sparse path's
exactness contract.

Reference for the sparse path (written here from mmpretrain's own modules, run densely over the
full map): every invisible token is set to zero at the input of every convolution (stage patch
embeddings, GSA's sr conv, PEG) and excluded from every attention's keys by an additive -1e9
(LSA: invisible and padding keys; GSA: keys of invisible mask units); outputs are gathered at the
visible positions. exp(-1e9) is exactly 0 in fp32 and fp64, so excluded keys contribute nothing.

Tolerances: fp32 1e-5 (a few ulps of O(1) activations through 8 layers), fp64 1e-10.
"""
import re

import pytest
import torch
import torch.nn.functional as F
from mmpretrain.models import SVT

from greenmim_mm.models import GreenTwinsSVT
from greenmim_mm.ops import flex_available, random_unit_mask, upsample_mask
from test_green_swin import sparse_and_reference_grads

NEG = -1e9
TINY = dict(embed_dims=[16, 32, 32, 64], depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
            patch_sizes=[4, 2, 2, 2], strides=[4, 2, 2, 2], mlp_ratios=[2, 2, 2, 2],
            sr_ratios=[8, 4, 2, 1], window_sizes=[7, 7, 7, 7])
RATIOS = [0.0, 0.5, 0.75, 0.9, 'one']


def make_model(dtype=torch.float32, arch=TINY, **kw):
    torch.manual_seed(0)
    kwargs = dict(arch=arch, out_indices=(0, 1, 2, 3), qkv_bias=True, attn_backend='sdpa',
                  norm_after_stage=[False, True, False, True])
    kwargs.update(kw)
    model = GreenTwinsSVT(**kwargs)
    model.init_weights()
    with torch.no_grad():  # non-trivial norms, biases and PEG kernels: every parameter matters
        for name, p in model.named_parameters():
            if 'norm' in name or name.endswith('bias') or 'position_encodings' in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype).eval()


def make_mask(hw, ratio, seed=0):
    grid = (hw[0] // 32, hw[1] // 32)
    gen = torch.Generator().manual_seed(seed)
    if ratio == 'one':
        mask = torch.ones(grid, dtype=torch.bool)
        mask.view(-1)[torch.randint(grid[0] * grid[1], (1,), generator=gen).item()] = False
        return mask
    return random_unit_mask(grid, ratio, gen)


# ---------------------------------------------------------------------------- reference
def ref_lsa(attn, x, hw, vis):
    """LSA over the full map; keys that are invisible or padding get -1e9."""
    b, n, c = x.shape
    h, w = hw
    ws, heads = attn.window_size, attn.num_heads
    pad_r, pad_b = (ws - w % ws) % ws, (ws - h % ws) % ws
    x = F.pad(x.view(b, h, w, c), (0, 0, 0, pad_r, 0, pad_b))
    keep = F.pad(vis, (0, pad_r, 0, pad_b), value=False)
    hp, wp = x.shape[1:3]
    nh, nw = hp // ws, wp // ws
    win = x.reshape(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b, nh * nw, ws * ws, c)
    keep = keep.reshape(nh, ws, nw, ws).transpose(1, 2).reshape(nh * nw, 1, ws * ws)
    q, k, v = attn.qkv(win).reshape(b, nh * nw, ws * ws, 3, heads, c // heads) \
        .permute(3, 0, 1, 4, 2, 5)
    logits = q @ k.transpose(-2, -1) * attn.scale
    logits = logits + ((~keep).to(x.dtype) * NEG)[None, :, None]
    out = (logits.softmax(-1) @ v).transpose(2, 3).reshape(b, nh, nw, ws, ws, c)
    out = out.transpose(2, 3).reshape(b, hp, wp, c)[:, :h, :w].reshape(b, n, c)
    return attn.proj(out)


def ref_gsa(attn, x, hw, vis):
    """GSA over the full map: sr conv on the zero-filled map, keys of invisible units -1e9."""
    b, n, c = x.shape
    heads, sr = attn.num_heads, attn.sr_ratio
    q = attn.q(x).reshape(b, n, heads, -1).transpose(1, 2)
    if sr > 1:
        m = x.transpose(1, 2).reshape(b, c, *hw) * vis.to(x.dtype)
        kv_in = attn.norm(attn.sr(m).flatten(2).transpose(1, 2))
    else:
        kv_in = x
    k, v = attn.kv(kv_in).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
    key_vis = vis[::sr, ::sr].reshape(-1)
    logits = q @ k.transpose(-2, -1) * (c // heads) ** -0.5
    logits = logits + (~key_vis).to(x.dtype) * NEG
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
    return attn.proj(out)


def reference_sparse(model, img, unit_mask, after_embed=False):
    """Dense SVT with invisible tokens zero at every conv input and excluded from every key.
    ``after_embed`` (``out_after_downsample``): out index i < last is instead stage i+1's
    patch-embedding output at stage i+1's visible tokens."""
    outs, last = [], model.num_stage - 1
    x = img * upsample_mask(~unit_mask, 32).to(img.dtype)
    for i in range(model.num_stage):
        vis = ~upsample_mask(unit_mask, 32 // model.stage_stride(i))
        x, hw = model.patch_embeds[i](x)
        if after_embed and i > 0 and i - 1 in model.out_indices:
            outs.append(x[:, vis.reshape(-1)])
        for j, layer in enumerate(model.stages[i]):
            attend = ref_lsa if j % 2 == 0 else ref_gsa
            x = x + attend(layer.attn, layer.norm1(x), hw, vis)
            x = x + layer.ffn(layer.norm2(x))
            if j == 0:
                peg = model.position_encodings[i]
                m = x.transpose(1, 2).reshape(x.shape[0], -1, *hw)
                x = x + peg.proj(m * vis.to(x.dtype)).flatten(2).transpose(1, 2)
        x = getattr(model, f'norm_after_stage{i}')(x)
        if i in model.out_indices and not (after_embed and i < last):
            outs.append(x[:, vis.reshape(-1)])
        x = x.transpose(1, 2).reshape(x.shape[0], -1, *hw)
        if i + 1 < model.num_stage:  # zero the next embedding's invisible input blocks
            x = x * vis.to(x.dtype)
    return outs


def max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a, b))


# ---------------------------------------------------------------------------- state dict / dense
@pytest.mark.parametrize('arch', ['small', TINY])
def test_state_dict_is_mmpretrain_svt_both_ways(arch):
    ours = GreenTwinsSVT(arch=arch, out_indices=(0, 1, 2, 3))
    theirs = SVT(arch=arch, out_indices=(0, 1, 2, 3))
    sd_ours, sd_theirs = ours.state_dict(), theirs.state_dict()
    assert list(sd_ours) == list(sd_theirs)
    assert all(sd_ours[k].shape == sd_theirs[k].shape for k in sd_ours)
    theirs.load_state_dict(sd_ours, strict=True)
    ours.load_state_dict(sd_theirs, strict=True)


@pytest.mark.parametrize('hw', [(224, 224), (256, 256), (256, 320)])
def test_dense_path_equals_mmpretrain_where_padding_is_handled(hw):
    """Maps that are multiples of the window (224) or need padding on both sides (256, 256x320):
    mmpretrain's own mask is right there, so the two agree."""
    ours = make_model()
    theirs = SVT(arch=TINY, out_indices=(0, 1, 2, 3), qkv_bias=True,
                 norm_after_stage=[False, True, False, True]).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert [t.shape for t in a] == [(2, c, hw[0] // s, hw[1] // s) for c, s in
                                    zip(TINY['embed_dims'], (4, 8, 16, 32))]
    assert max_diff(a, b) <= 1e-5


def test_dense_lsa_excludes_padding_keys_where_mmpretrain_does_not():
    """224x256: stage-1 map 56x64 with window 7 needs right padding only (pad_b = 0), where
    mmpretrain's ``mask[:, -pad_b:, :]`` marks every row, so its padding tokens become keys."""
    ours = make_model(torch.float64)
    theirs = SVT(arch=TINY, out_indices=(0, 1, 2, 3), qkv_bias=True,
                 norm_after_stage=[False, True, False, True]).to(torch.float64).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 256, dtype=torch.float64)
    all_visible = torch.zeros(7, 8, dtype=torch.bool)
    with torch.no_grad():
        dense = [t.flatten(2).transpose(1, 2) for t in ours(x)]
        ref = reference_sparse(ours, x, all_visible)
        mmpretrain = [t.flatten(2).transpose(1, 2) for t in theirs(x)]
    assert max_diff(dense, ref) <= 1e-10
    assert max_diff(mmpretrain, ref) > 1e-3


# ---------------------------------------------------------------------------- sparse exactness
@pytest.mark.parametrize('size', [192, 224, 256])
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_sparse_equals_masked_dense_reference(size, dtype, tol):
    model = make_model(dtype)
    x = torch.randn(2, 3, size, size, dtype=dtype)
    for seed, ratio in enumerate(RATIOS):
        mask = make_mask((size, size), ratio, seed)
        with torch.no_grad():
            sparse = model(x, mask=mask)
            ref = reference_sparse(model, x, mask)
        n_vis = int((~mask).sum())
        assert [tuple(t.shape) for t in sparse] == \
            [(2, n_vis * 4**(3 - i), c) for i, c in enumerate(TINY['embed_dims'])]
        assert max_diff(sparse, ref) <= tol, (ratio, max_diff(sparse, ref))


@pytest.mark.parametrize('sparse_conv,grouping', [('gather', 'optimal'), ('dense', 'window'),
                                                  ('gather', 'single')])
def test_parameter_gradients_match_reference(sparse_conv, grouping):
    model = make_model(torch.float64, sparse_conv=sparse_conv, grouping=grouping)
    x = torch.randn(2, 3, 224, 256, dtype=torch.float64)
    mask = make_mask((224, 256), 0.75, seed=3)
    sparse_g, ref_g = sparse_and_reference_grads(model, x, mask, reference_sparse)
    assert set(sparse_g) == set(ref_g)
    assert max((sparse_g[n] - ref_g[n]).abs().max().item() for n in sparse_g) <= 1e-10
    # the PEG kernels, sr convs and embeddings really are used
    assert all(sparse_g[n].abs().sum() > 0 for n in sparse_g
               if 'position_encodings' in n or '.sr.' in n or 'patch_embeds' in n)


@pytest.mark.parametrize('size', [192, 224, 256])
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_parameter_gradients_match_reference_at_every_size_and_ratio(size, dtype, tol):
    """The exactness contract with parameter gradients (default sparse_conv 'auto': the gather
    at 0.75 / 0.9 / one unit, the dense form at 0 / 0.5). Bound relative to each parameter's
    largest reference gradient (at least 1): fp32 gradients sum O(N) products."""
    model = make_model(dtype)
    x = torch.randn(2, 3, size, size, dtype=dtype)
    for seed, ratio in enumerate(RATIOS):
        mask = make_mask((size, size), ratio, seed)
        sparse_g, ref_g = sparse_and_reference_grads(model, x, mask, reference_sparse)
        worst = max(((sparse_g[n] - ref_g[n]).abs().max() / ref_g[n].abs().max().clamp(min=1))
                    .item() for n in ref_g)
        assert worst <= tol, (size, ratio, worst)


def test_ratio_zero_equals_dense_path():
    model = make_model(torch.float64)
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        dense = [t.flatten(2).transpose(1, 2) for t in model(x)]
        sparse = model(x, mask=torch.zeros(7, 7, dtype=torch.bool))
    assert max_diff(dense, sparse) <= 1e-10


def test_feature_info_and_geometry_locate_the_outputs():
    model = make_model(out_indices=(1, 3))
    assert model.mask_unit == 32
    assert model.feature_info == [dict(num_chs=32, reduction=8, stage=1,
                                       module='norm_after_stage1'),
                                  dict(num_chs=64, reduction=32, stage=3,
                                       module='norm_after_stage3')]
    mask = make_mask((192, 224), 0.5, 1)
    geo = model.sparse_geometry(mask, (192, 224))
    coords = model.output_coords(geo, model.feature_info)
    assert [tuple(g.hw) for g in geo] == [(48, 56), (24, 28), (12, 14), (6, 7)]
    assert torch.equal(coords[1], torch.nonzero(~mask))
    outs = model(torch.randn(1, 3, 192, 224), mask=mask)
    assert [o.shape[1] for o in outs] == [len(c) for c in coords]


def test_layouts_built_for_the_backend_only():
    model = make_model()
    geo = model.sparse_geometry(make_mask((224, 224), 0.75), (224, 224))
    plan = geo[0].plans[7]
    assert plan.layout == 'padded' and plan.slots is not None and plan.order is None
    model.attn_backend = 'flex' if flex_available() else 'sdpa'
    if flex_available():
        plan = model.sparse_geometry(make_mask((224, 224), 0.75), (224, 224))[0].plans[7]
        assert plan.layout == 'packed' and plan.slots is None and plan.order is not None
    for mode, built in (('dense', False), ('gather', True), ('auto', True)):
        geo = make_model(sparse_conv=mode).sparse_geometry(make_mask((224, 224), 0.75),
                                                          (224, 224))
        assert all((g.neighbours is not None) == built for g in geo)
    # 'auto' (the default): the gather at ratio 0.75 (12 of 49 units visible), dense at 0.5 / 0
    assert make_model().sparse_conv == 'auto'
    for ratio, built in ((0.75, True), (0.5, False), (0.0, False)):
        geo = make_model().sparse_geometry(make_mask((224, 224), ratio), (224, 224))
        assert all((g.neighbours is not None) == built for g in geo), ratio


@pytest.mark.skipif(not flex_available(), reason='FlexAttention not in this torch')
def test_flex_backend_agrees_with_sdpa():
    model = make_model(torch.float64)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    mask = make_mask((224, 224), 0.75, seed=5)
    with torch.no_grad():
        sdpa = model(x, mask=mask)
        model.attn_backend = 'flex'
        flex = model(x, mask=mask)
    assert max_diff(sdpa, flex) <= 1e-10


def test_training_mode_with_drop_path_runs_and_backpropagates():
    model = make_model(drop_path_rate=0.1, drop_rate=0.1).train()
    x = torch.randn(2, 3, 224, 224, requires_grad=True)
    out = model(x, mask=make_mask((224, 224), 0.75))
    sum(o.sum() for o in out).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ---------------------------------------------------------------------------- errors
def test_clear_errors():
    model = make_model()
    with pytest.raises(ValueError, match='multiples of the 32-px mask unit'):
        model(torch.randn(1, 3, 200, 224), mask=torch.zeros(7, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match=r'shape \(H/32, W/32\) = \(7, 7\)'):
        model(torch.randn(1, 3, 224, 224), mask=torch.zeros(6, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match='bool tensor'):
        model(torch.randn(1, 3, 224, 224), mask=torch.zeros(7, 7))
    with pytest.raises(ValueError, match='at least one unit'):
        model(torch.randn(1, 3, 224, 224), mask=torch.ones(7, 7, dtype=torch.bool))
    bad_sr = GreenTwinsSVT(arch=dict(TINY, sr_ratios=[4, 4, 2, 1]))
    with pytest.raises(ValueError, match='sr_ratio 4 x stage stride 4 px = 16 px is not the '
                                         '32-px mask unit'):
        bad_sr(torch.randn(1, 3, 224, 224), mask=torch.zeros(7, 7, dtype=torch.bool))
    bad_sr(torch.randn(1, 3, 224, 224))  # its dense path still works
    assert 'sr_ratio 4' in bad_sr.sparse_unsupported and model.sparse_unsupported is None
    for shape in [(3, 224, 224), (1, 1, 3, 224, 224)]:  # used to be a bare IndexError
        for mask in (None, torch.zeros(7, 7, dtype=torch.bool)):
            with pytest.raises(ValueError, match=r'GreenTwinsSVT takes \(B, C, H, W\) images; got '
                                                 + re.escape(str(shape))):
                model(torch.randn(*shape), mask=mask)
    with pytest.raises(ValueError, match='attn_backend'):
        GreenTwinsSVT(arch=TINY, attn_backend='cuda-magic')
    with pytest.raises(ValueError, match='grouping'):
        GreenTwinsSVT(arch=TINY, grouping='best')
    with pytest.raises(ValueError, match='sparse_conv'):
        GreenTwinsSVT(arch=TINY, sparse_conv='spconv')


def test_pretraining_refuses_a_backbone_without_sparse_path_at_build():
    """A Twins arch whose sr x stride is not the mask unit used to build and fail at the first
    loss; now GreenMIM and LocalMIM refuse it when built, with the backbone's reason."""
    from greenmim_mm.registry import MODELS
    backbone = dict(type='GreenTwinsSVT', arch=dict(TINY, sr_ratios=[4, 4, 2, 1]))
    with pytest.raises(ValueError, match='sparse path of GreenTwinsSVT.*sr_ratio 4 x stage stride'):
        MODELS.build(dict(type='GreenMIM', backbone=backbone,
                          neck=dict(type='MAEUnitDecoder', in_channels=64, embed_dims=32,
                                    num_heads=2),
                          head=dict(type='UnitReconstructionHead')))
    with pytest.raises(ValueError, match='sparse path of GreenTwinsSVT'):
        MODELS.build(dict(
            type='LocalMIM', backbone=dict(backbone, out_indices=(3, )),
            necks=[dict(type='MAEGridDecoder', in_channels=64, pred_dims=27, embed_dims=32,
                        num_heads=2)],
            heads=[dict(type='CellReconstructionHead',
                        target_generator=dict(type='LocalMIMHOGGenerator', cell=32))]))


# ---------------------------------------------------------------------------- downstream use
def test_mmpretrain_classifier_builds_and_trains_a_step():
    from greenmim_mm.registry import MODELS
    from mmpretrain.structures import DataSample
    model = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='GreenTwinsSVT', arch='nano', norm_after_stage=[False] * 3 + [True]),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=5, in_channels=256,
                  loss=dict(type='CrossEntropyLoss'))))
    model.init_weights()
    samples = [DataSample().set_gt_label(i) for i in range(2)]
    loss = model.loss(torch.randn(2, 3, 128, 128), samples)['loss']
    loss.backward()
    assert torch.isfinite(loss)
    assert model.backbone.patch_embeds[0].projection.weight.grad is not None


def test_mmdet_backbone_into_fpn():
    import greenmim_mm  # noqa: F401
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    backbone = MMDET_MODELS.build(dict(type='greenmim_mm.GreenTwinsSVT', arch='nano',
                                       out_indices=(0, 1, 2, 3), norm_after_stage=True))
    neck = MMDET_MODELS.build(dict(type='mmdet.FPN', in_channels=[32, 64, 128, 256],
                                   out_channels=16, num_outs=5))
    feats = backbone(torch.randn(1, 3, 160, 224))
    assert [f.shape[-2:] for f in feats] == [(40, 56), (20, 28), (10, 14), (5, 7)]
    outs = neck(feats)
    assert [o.shape for o in outs] == [(1, 16, 40 // 2**i, 56 // 2**i) for i in range(4)] + \
        [(1, 16, 3, 4)]

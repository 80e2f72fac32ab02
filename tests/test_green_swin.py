"""GreenSwinTransformer: state dict, dense path, and the sparse path's exactness contract.

Reference for the sparse path: mmpretrain's own Swin modules run densely over the full map, with
every invisible token (and any zero padding of a map to a multiple of the window) excluded from
the attention keys by an additive -1e9 mask; its outputs are then gathered at the visible
positions. exp(-1e9) is exactly 0 in fp32 and fp64, so excluded keys contribute nothing, and
invisible tokens never reach a visible one (merging never mixes them), so the reference is exact.

Tolerances: fp32 1e-5 (a few ulps of O(1) activations through ~10 blocks), fp64 1e-10.
"""
import pytest
import torch
import torch.nn.functional as F
from mmpretrain.models import SwinTransformer

from greenmim_mm.models import GreenSwinTransformer
from greenmim_mm.ops import flex_available, random_unit_mask, upsample_mask

NEG = -1e9
TINY = dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])

# (input size, window_size, stage_cfgs): windows 6/7/8/14, per-stage windows, 192/224/256 px;
# (256, 7) has maps that are not multiples of the window (padding is excluded as a key).
CONFIGS = [
    (224, 7, None),
    (192, 6, None),
    (256, 8, None),
    (224, 14, [dict(window_size=w) for w in (14, 14, 14, 7)]),
    (224, 7, [dict(window_size=w) for w in (7, 7, 14, 7)]),
    (256, 7, None),
]
RATIOS = [0.0, 0.5, 0.75, 0.9, 'one']


def make_model(size, window, stage_cfgs, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    kwargs = dict(arch=TINY, img_size=size, window_size=window, drop_path_rate=0.0,
                  out_indices=(0, 1, 2, 3), attn_backend='sdpa', **kw)
    if stage_cfgs is not None:
        kwargs['stage_cfgs'] = stage_cfgs
    model = GreenSwinTransformer(**kwargs)
    model.init_weights()
    with torch.no_grad():  # non-trivial norms and biases, so every parameter matters
        for name, p in model.named_parameters():
            if 'norm' in name or name.endswith('bias'):
                p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype).eval()


def make_mask(size, ratio, seed=0):
    grid = (size // 32, size // 32)
    gen = torch.Generator().manual_seed(seed)
    if ratio == 'one':
        mask = torch.ones(grid, dtype=torch.bool)
        idx = torch.randint(grid[0] * grid[1], (1,), generator=gen).item()
        mask.view(-1)[idx] = False
        return mask
    return random_unit_mask(grid, ratio, gen)


# ---------------------------------------------------------------------------- reference
def ref_window_msa(attn, query, hw, vis):
    """mmpretrain ``ShiftWindowMSA.forward`` plus a key mask for invisible / padding tokens."""
    b, _, c = query.shape
    h, w = hw
    query = query.view(b, h, w, c)
    ws, shift = attn.window_size, attn.shift_size
    if min(h, w) == ws and not attn.pad_small_map:
        shift = 0
    pad_r, pad_b = (ws - w % ws) % ws, (ws - h % ws) % ws
    query = F.pad(query, (0, 0, 0, pad_r, 0, pad_b))
    visp = F.pad(vis, (0, pad_r, 0, pad_b), value=False)
    hp, wp = query.shape[1:3]
    if shift:
        query = torch.roll(query, (-shift, -shift), (1, 2))
        visp = torch.roll(visp, (-shift, -shift), (0, 1))
    windows = attn.window_partition(query, ws).view(-1, ws * ws, c)
    vis_w = attn.window_partition(visp[None, :, :, None].to(query.dtype), ws).view(-1, ws * ws)
    mask = ((1 - vis_w) * NEG)[:, None, :].expand(-1, ws * ws, -1)
    region = attn.get_attn_mask((hp, wp), ws, shift, query.device)
    if region is not None:
        mask = mask + region.to(query.dtype)
    out = attn.w_msa(windows, mask=mask).view(-1, ws, ws, c)
    out = attn.window_reverse(out, hp, wp, ws)
    if shift:
        out = torch.roll(out, (shift, shift), (1, 2))
    return attn.drop(out[:, :h, :w].reshape(b, h * w, c))


def reference_sparse(model, x, unit_mask):
    """Dense mmpretrain Swin with invisible keys excluded, gathered at visible positions."""
    x, hw = model.patch_embed(x)
    x = model.drop_after_pos(x)
    vis = ~upsample_mask(unit_mask, 8)
    outs = []
    for i, stage in enumerate(model.stages):
        for blk in stage.blocks:
            identity = x
            x = identity + ref_window_msa(blk.attn, blk.norm1(x), hw, vis)
            x = blk.ffn(blk.norm2(x), identity=x)
        if i in model.out_indices:
            outs.append(getattr(model, f'norm{i}')(x)[:, vis.reshape(-1)])
        if stage.downsample is not None:
            x, hw = stage.downsample(x, hw)
            vis = vis[::2, ::2]
    return outs


def max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a, b))


# ---------------------------------------------------------------------------- state dict / dense
def test_state_dict_matches_mmpretrain_and_dense_path_equal():
    ours = make_model(224, 7, None)
    theirs = SwinTransformer(arch=TINY, img_size=224, window_size=7, drop_path_rate=0.0,
                             out_indices=(0, 1, 2, 3))
    sd_ours, sd_theirs = ours.state_dict(), theirs.state_dict()
    assert list(sd_ours) == list(sd_theirs)
    assert all(sd_ours[k].shape == sd_theirs[k].shape for k in sd_ours)
    theirs.load_state_dict(sd_ours, strict=True)
    theirs.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert [t.shape for t in a] == [(2, 16 * 2**i, 56 // 2**i, 56 // 2**i) for i in range(4)]
    assert max_diff(a, b) <= 1e-5
    # and the other way round
    fresh = GreenSwinTransformer(arch=TINY, img_size=224, window_size=7, out_indices=(0, 1, 2, 3))
    fresh.load_state_dict(theirs.state_dict(), strict=True)


def test_state_dict_matches_for_named_arch_and_per_stage_windows():
    cfg = dict(arch='tiny', window_size=7, stage_cfgs=[dict(window_size=w) for w in (14, 14, 14, 7)])
    ours, theirs = GreenSwinTransformer(**cfg), SwinTransformer(**cfg)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in theirs.state_dict().items()}


# ---------------------------------------------------------------------------- sparse exactness
@pytest.mark.parametrize('size,window,stage_cfgs', CONFIGS)
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_sparse_equals_masked_dense_reference(size, window, stage_cfgs, dtype, tol):
    model = make_model(size, window, stage_cfgs, dtype)
    x = torch.randn(2, 3, size, size, dtype=dtype)
    for seed, ratio in enumerate(RATIOS):
        mask = make_mask(size, ratio, seed)
        with torch.no_grad():
            sparse = model(x, mask=mask)
            ref = reference_sparse(model, x, mask)
        n_vis = int((~mask).sum())
        assert [tuple(t.shape) for t in sparse] == \
            [(2, n_vis * 4**(3 - i), 16 * 2**i) for i in range(4)]
        assert max_diff(sparse, ref) <= tol, (ratio, max_diff(sparse, ref))


@pytest.mark.parametrize('size,window,stage_cfgs', [c for c in CONFIGS if c[0] % (c[1] * 8) == 0
                                                    or c[2] is not None])
def test_ratio_zero_equals_dense_path(size, window, stage_cfgs):
    model = make_model(size, window, stage_cfgs, torch.float64)
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    mask = torch.zeros(size // 32, size // 32, dtype=torch.bool)
    with torch.no_grad():
        dense = [t.flatten(2).transpose(1, 2) for t in model(x)]
        sparse = model(x, mask=mask)
    assert max_diff(dense, sparse) <= 1e-10


def sparse_and_reference_grads(model, x, mask, reference):
    """Parameter gradients {name: grad} of the sparse path and of ``reference(model, x, mask)``
    for the same random weighting of their outputs."""
    weights, grads = None, []
    for fn in (lambda: model(x, mask=mask), lambda: reference(model, x, mask)):
        model.zero_grad()
        outs = fn()
        if weights is None:
            weights = [torch.randn_like(o) for o in outs]
        sum((o * w).sum() for o, w in zip(outs, weights)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    return grads


@pytest.mark.parametrize('grouping', ['optimal', 'window', 'single'])
def test_parameter_gradients_match_reference(grouping):
    model = make_model(224, 7, None, torch.float64, grouping=grouping)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    mask = make_mask(224, 0.75, seed=3)
    sparse_g, ref_g = sparse_and_reference_grads(model, x, mask, reference_sparse)
    assert set(sparse_g) == set(ref_g)
    worst = max((sparse_g[n] - ref_g[n]).abs().max().item() for n in sparse_g)
    assert worst <= 1e-10
    # every block's bias table receives gradient (the lookup really is used)
    assert all(sparse_g[n].abs().sum() > 0 for n in sparse_g if 'relative_position_bias' in n)


def test_training_mode_drop_path_and_checkpointing_run():
    model = make_model(224, 7, None, with_cp=True).train()
    x = torch.randn(2, 3, 224, 224, requires_grad=True)
    out = model(x, mask=make_mask(224, 0.75))
    sum(o.sum() for o in out).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.skipif(not flex_available(), reason='FlexAttention not in this torch')
def test_flex_backend_agrees_with_sdpa():
    model = make_model(224, 7, None, torch.float64)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    mask = make_mask(224, 0.75, seed=5)
    with torch.no_grad():
        sdpa = model(x, mask=mask)
        model.attn_backend = 'flex'
        flex = model(x, mask=mask)
    assert max_diff(sdpa, flex) <= 1e-10


# ---------------------------------------------------------------------------- errors
def test_clear_errors():
    model = make_model(224, 7, None)
    with pytest.raises(ValueError, match='multiples of the 32-px mask unit'):
        model(torch.randn(1, 3, 200, 224), mask=torch.zeros(7, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match=r'shape \(H/32, W/32\) = \(7, 7\)'):
        model(torch.randn(1, 3, 224, 224), mask=torch.zeros(6, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match='bool tensor'):
        model(torch.randn(1, 3, 224, 224), mask=torch.zeros(7, 7))
    with pytest.raises(ValueError, match='at least one unit'):
        model(torch.randn(1, 3, 224, 224), mask=torch.ones(7, 7, dtype=torch.bool))
    big_window = make_model(224, 14, None)
    with pytest.raises(ValueError, match='smaller than its window size 14.*stage_cfgs'):
        big_window(torch.randn(1, 3, 224, 224), mask=make_mask(224, 0.75))
    with pytest.raises(ValueError, match='attn_backend'):
        GreenSwinTransformer(arch=TINY, attn_backend='cuda-magic')
    with pytest.raises(ValueError, match='grouping'):
        GreenSwinTransformer(arch=TINY, grouping='best')
    for mask in (None, torch.zeros(7, 7, dtype=torch.bool)):  # used to be a bare IndexError
        with pytest.raises(ValueError, match=r'takes \(B, C, H, W\) images; got \(3, 224, 224\)'):
            model(torch.randn(3, 224, 224), mask=mask)


def test_mmdet_swin_loads_our_weights_and_agrees_at_detection_sizes():
    from mmdet.models.backbones import SwinTransformer as MMDetSwin
    ours = make_model(224, 7, None)
    theirs = MMDetSwin(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), window_size=7,
                       drop_path_rate=0.0, out_indices=(0, 1, 2, 3), convert_weights=False)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    theirs.eval()
    x = torch.randn(1, 3, 256, 320)  # no stage map equals the window: both keep every shift
    with torch.no_grad():
        assert max_diff(ours(x), theirs(x)) <= 1e-5

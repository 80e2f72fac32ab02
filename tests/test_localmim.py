"""LocalMIM parts (grid decoder, pixel / HOG targets, cell head) and the Swin algorithm.

References are independent of the code under test: a raster walk for placement, loops over
cells for targets and losses (HOG from numpy's reflect padding and a per-pixel atan2),
mmpretrain's own ``HOGGenerator`` output, mmpretrain's dense Swin with invisible keys excluded for
the sparse path with ``out_after_downsample=True``, GreenMIM's own mask draws for the masks.
Tolerances: fp32 1e-5 / 1e-6 on O(1) values, fp64 1e-10.
"""
import math
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config

import greenmim_mm  # noqa: F401
from greenmim_mm.models.algorithms import LocalMIM, draw_unit_mask
from greenmim_mm.models.algorithms import greenmim as greenmim_module
from greenmim_mm.models.heads import CellReconstructionHead
from greenmim_mm.models.necks import MAEGridDecoder
from greenmim_mm.models.necks.grid_decoder import grid_sincos_embedding
from greenmim_mm.models.target_generators import LocalMIMHOGGenerator, PixelTargetGenerator
from greenmim_mm.ops import random_unit_mask, upsample_mask
from greenmim_mm.registry import MODELS
from test_convert_checkpoint import one_thread  # noqa: F401 (autouse: one intra-op thread)
from test_green_swin import make_mask, make_model, max_diff, ref_window_msa
from test_greenmim import raster_placement

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


# ----------------------------------------------------------------------------- decoder
@pytest.mark.parametrize('units,factor', [((2, 2), 4), ((2, 3), 2), ((3, 3), 1)])
def test_grid_decoder_places_every_visible_token_at_its_own_cell(units, factor):
    """On a stage grid (the unit mask repeated ``factor`` times): placement = raster walk + the
    closed-form position of every cell; changing latent k changes exactly cell k's output."""
    torch.manual_seed(0)
    dec = MAEGridDecoder(in_channels=8, pred_dims=5, embed_dims=8, depth=0, num_heads=2)
    dec.init_weights()
    cells = upsample_mask(random_unit_mask(units, 0.5, torch.Generator().manual_seed(1)),
                          factor)
    vis = (~cells).flatten().nonzero().squeeze(1)
    latent = torch.randn(2, len(vis), 8)
    placed = dec.place(dec.decoder_embed(latent), cells)
    ref = torch.where(cells.flatten()[None, :, None], dec.mask_token,
                      raster_placement(dec.decoder_embed(latent), cells))
    h, w = cells.shape
    omega = 1.0 / 10000**(torch.arange(2, dtype=torch.float64) / 2)
    pos = torch.stack([torch.cat([torch.sin(r * omega), torch.cos(r * omega),
                                  torch.sin(c * omega), torch.cos(c * omega)])
                       for r in range(h) for c in range(w)]).float()
    torch.testing.assert_close(placed, ref + pos, rtol=0, atol=1e-6)
    out = dec(latent, cells)
    assert out.shape == (2, h * w, 5)
    for k in range(0, len(vis), max(1, len(vis) // 5)):
        bumped = latent.clone()
        bumped[0, k] += torch.linspace(-1, 1, 8)
        changed = (dec(bumped, cells) - out).abs().amax(-1)[0] > 0
        assert changed.nonzero().flatten().tolist() == [int(vis[k])]


def test_grid_decoder_with_a_block_equals_its_parts():
    torch.manual_seed(0)
    dec = MAEGridDecoder(in_channels=12, pred_dims=54, embed_dims=16, depth=1, num_heads=4)
    dec.init_weights()
    cells = upsample_mask(random_unit_mask((3, 3), 0.75, torch.Generator().manual_seed(2)), 2)
    latent = torch.randn(2, int((~cells).sum()), 12)
    x = torch.where(cells.flatten()[None, :, None], dec.mask_token,
                    raster_placement(dec.decoder_embed(latent), cells))
    x = dec.decoder_blocks[0](x + grid_sincos_embedding((6, 6), 16))
    ref = dec.decoder_pred(dec.decoder_norm(x))
    torch.testing.assert_close(dec(latent, cells), ref, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- targets
def loop_pixel_target(imgs, cell, norm_pix):
    b, c, h, w = imgs.shape
    out = []
    for i in range(b):
        rows = []
        for r in range(h // cell):
            for q in range(w // cell):
                t = imgs[i, :, r * cell:(r + 1) * cell, q * cell:(q + 1) * cell]
                t = t.permute(1, 2, 0).reshape(-1).double()  # (p, q, c)
                if norm_pix:
                    mean = t.sum() / t.numel()
                    var = ((t - mean)**2).sum() / (t.numel() - 1)
                    t = (t - mean) / math.sqrt(var + 1e-6)
                rows.append(t)
        out.append(torch.stack(rows))
    return torch.stack(out)


@pytest.mark.parametrize('cell,norm_pix', [(4, True), (8, True), (8, False)])
def test_pixel_target_equals_a_loop_over_cells(cell, norm_pix):
    imgs = torch.randn(2, 3, 16, 24) * 2 + 0.5
    gen = PixelTargetGenerator(cell, norm_pix=norm_pix)
    got = gen(imgs)
    assert got.shape == (2, (16 // cell) * (24 // cell), 3 * cell * cell) == \
        (2, got.shape[1], gen.out_channels)
    torch.testing.assert_close(got.double(), loop_pixel_target(imgs, cell, norm_pix),
                               rtol=0, atol=1e-5)


def numpy_hog(img, cell, nbins, bias=(0.0, 0.0)):
    """LocalMIM's HOG written out: (3, H, W) numpy -> (cells, 3 * nbins)."""
    c, h, w = img.shape
    pad = np.pad(img.astype(np.float64), ((0, 0), (1, 1), (1, 1)), mode='reflect')
    kx = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64)
    gx, gy = np.zeros((c, h, w)), np.zeros((c, h, w))
    for i in range(3):
        for j in range(3):
            window = pad[:, i:i + h, j:j + w]
            gx += kx[i, j] * window
            gy += kx[j, i] * window
    gx, gy = gx + bias[0], gy + bias[1]
    hist = np.zeros((h // cell, w // cell, c, nbins))
    for ch in range(c):
        for r in range(h):
            for q in range(w):
                angle = math.atan2(gx[ch, r, q], gy[ch, r, q])
                b = math.floor(angle / math.pi * nbins) % nbins
                hist[r // cell, q // cell, ch, b] += math.hypot(gx[ch, r, q], gy[ch, r, q])
    hist /= cell * cell
    norm = np.sqrt((hist**2).sum(-1, keepdims=True))
    hist = hist / np.maximum(norm, 1e-12)
    return hist.reshape(-1, c * nbins)


@pytest.mark.parametrize('cell,nbins,bias', [(4, 9, False), (8, 18, False), (8, 18, True)])
def test_hog_equals_a_per_pixel_reference(cell, nbins, bias):
    """Integer-valued images: the gradients are exact in fp32 and fp64 alike, so the exact ties
    that reflect padding creates (gy = 0 on the first/last rows, gx = 0 on the first/last
    columns: bin boundaries for even nbins) fall into the same bin in both computations."""
    torch.manual_seed(0)
    imgs = torch.randint(-4, 5, (2, 3, 16, 24)).float()
    gen = LocalMIMHOGGenerator(cell, nbins=nbins, gradient_bias=bias)
    got = gen(imgs)
    assert got.shape == (2, (16 // cell) * (24 // cell), 3 * nbins) and gen.out_channels == 3 * nbins
    b = tuple(gen.gradient_bias.tolist()) if bias else (0.0, 0.0)
    for i in range(2):
        ref = numpy_hog(imgs[i].numpy(), cell, nbins, b)
        np.testing.assert_allclose(got[i].numpy(), ref, rtol=0, atol=1e-5)


def test_hog_equals_mmpretrain_hog_generator_without_gaussian_window():
    """mmpretrain's HOGGenerator (sum pooling, no window) keeps its cell histograms in ``out``:
    after the per-cell L2 normalisation they equal ours."""
    from mmpretrain.models.selfsup import HOGGenerator
    torch.manual_seed(1)
    imgs = torch.randn(2, 3, 112, 112)
    theirs = HOGGenerator(nbins=9, pool=8, gaussian_window=0)
    theirs(imgs)
    ref = theirs.out.permute(0, 3, 4, 1, 2).reshape(2, 14 * 14, 27)
    torch.testing.assert_close(LocalMIMHOGGenerator(8, nbins=9)(imgs), ref, rtol=0, atol=1e-6)


def test_hog_gradients_are_mmpretrains_sobel_convolution():
    gen = LocalMIMHOGGenerator(8)
    x = torch.randn(2, 3, 16, 24)
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), mode='reflect')
    gx, gy = gen.gradients(x)
    for got, kernel in ((gx, gen.weight_x), (gy, gen.weight_y)):
        ref = torch.nn.functional.conv2d(pad, kernel, groups=3)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize('nbins', [9, 18])
def test_one_vertical_edge_puts_all_magnitude_into_one_bin(nbins):
    """Left half dark, right half bright: gy = 0 everywhere, gx != 0 only beside the edge, so
    every edge pixel votes into bin floor(+-pi/2 / pi * nbins) mod nbins = nbins // 2."""
    img = torch.full((1, 3, 16, 16), -1.0)
    img[..., 6:] = 1.5
    gen = LocalMIMHOGGenerator(8, nbins=nbins)
    magnitude, bins = gen.magnitude_and_bins(img)
    edge_pixels = magnitude > 0
    assert edge_pixels.any() and torch.equal(edge_pixels.nonzero()[:, 3].unique(),
                                             torch.tensor([5, 6]))
    assert torch.equal(bins[edge_pixels].unique(), torch.tensor([nbins // 2]))
    hog = gen(img).view(2, 2, 3, nbins)
    edge, flat = hog[:, 0], hog[:, 1]  # the edge (columns 5, 6) lies in the left cells
    expected = torch.zeros(nbins)
    expected[nbins // 2] = 1.0
    torch.testing.assert_close(edge, expected.expand_as(edge), rtol=0, atol=1e-6)
    assert torch.equal(flat, torch.zeros_like(flat))


def test_hog_bias_is_a_frozen_persistent_buffer():
    torch.manual_seed(3)
    gen = LocalMIMHOGGenerator(8, nbins=18, gradient_bias=True)
    assert 'gradient_bias' in gen.state_dict() and not list(gen.parameters())
    assert gen.gradient_bias.abs().max() <= 1 / 3 and gen.gradient_bias.abs().min() > 0
    flat = gen(torch.zeros(1, 3, 16, 16))  # every pixel votes the bias's orientation
    b = math.floor(math.atan2(*gen.gradient_bias.tolist()) / math.pi * 18) % 18
    assert torch.equal(flat.view(4, 3, 18).argmax(-1), torch.full((4, 3), b))
    other = LocalMIMHOGGenerator(8, nbins=18, gradient_bias=True)
    other.load_state_dict(gen.state_dict())
    assert torch.equal(other.gradient_bias, gen.gradient_bias)


def test_targets_reject_bad_sizes():
    with pytest.raises(ValueError, match='multiples of the 8-px HOG cell'):
        LocalMIMHOGGenerator(8)(torch.zeros(1, 3, 12, 16))
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        LocalMIMHOGGenerator(8)(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match='multiples'):
        PixelTargetGenerator(8)(torch.zeros(1, 3, 12, 16))


# ----------------------------------------------------------------------------- head
@pytest.mark.parametrize('target', ['pixel', 'hog'])
def test_head_loss_equals_a_loop_over_masked_cells(target):
    torch.manual_seed(0)
    imgs = torch.randn(2, 3, 16, 24)
    gen = (PixelTargetGenerator(4) if target == 'pixel' else LocalMIMHOGGenerator(4, nbins=9))
    head = CellReconstructionHead(gen)
    cells = upsample_mask(random_unit_mask((2, 3), 0.5, torch.Generator().manual_seed(6)), 2)
    pred = torch.randn(2, 24, head.out_channels)
    tgt = gen(imgs).double()
    total, count = 0.0, 0
    for i in range(2):
        for u, hidden in enumerate(cells.flatten().tolist()):
            if hidden:
                total += float(((pred[i, u].double() - tgt[i, u])**2).mean())
                count += 1
    assert float(head.loss(pred, imgs, cells)) == pytest.approx(total / count, rel=1e-5)
    # fractional per-sample weights (LocalMIM ViT's pooled mask): weighted mean
    weight = torch.rand(2, 24)
    err = ((pred.double() - tgt)**2).mean(-1)
    ref = float((err * weight).sum() / weight.sum())
    assert float(head.loss(pred, imgs, weight)) == pytest.approx(ref, rel=1e-5)
    with pytest.raises(ValueError, match='does not match the target'):
        head.loss(pred[:, :-1], imgs, cells)


# ----------------------------------------------------------------------------- sparse backbone
def reference_after_downsample(model, x, unit_mask):
    """Dense mmpretrain Swin with invisible keys excluded; outputs after patch merging (and the
    last stage's output), through ``norm{i}``, gathered at the visible positions."""
    x, hw = model.patch_embed(x)
    x = model.drop_after_pos(x)
    vis = ~upsample_mask(unit_mask, 8)
    outs = []
    for i, stage in enumerate(model.stages):
        for blk in stage.blocks:
            identity = x
            x = identity + ref_window_msa(blk.attn, blk.norm1(x), hw, vis)
            x = blk.ffn(blk.norm2(x), identity=x)
        if stage.downsample is not None:
            x, hw = stage.downsample(x, hw)
            vis = vis[::2, ::2]
        outs.append(getattr(model, f'norm{i}')(x)[:, vis.reshape(-1)])
    return outs


@pytest.mark.parametrize('size,window', [(224, 7), (192, 6), (256, 8)])
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_sparse_after_downsample_equals_masked_dense_reference(size, window, dtype, tol):
    model = make_model(size, window, None, dtype, out_after_downsample=True)
    x = torch.randn(2, 3, size, size, dtype=dtype)
    for seed, ratio in enumerate([0.5, 0.75, 'one']):
        mask = make_mask(size, ratio, seed)
        with torch.no_grad():
            sparse = model(x, mask=mask)
            ref = reference_after_downsample(model, x, mask)
        n_vis = int((~mask).sum())
        assert [tuple(t.shape) for t in sparse] == \
            [(2, n_vis * 4**max(0, 2 - i), 16 * 2**min(i + 1, 3)) for i in range(4)]
        assert max_diff(sparse, ref) <= tol, (ratio, max_diff(sparse, ref))


def test_sparse_after_downsample_at_ratio_zero_equals_dense_path():
    model = make_model(224, 7, None, torch.float64, out_after_downsample=True)
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        dense = [t.flatten(2).transpose(1, 2) for t in model(x)]
        sparse = model(x, mask=torch.zeros(7, 7, dtype=torch.bool))
    assert [t.shape[1] for t in dense] == [784, 196, 49, 49]
    assert max_diff(dense, sparse) <= 1e-10


# ----------------------------------------------------------------------------- algorithm
def tiny_localmim(size=96, target='hog', **kw):
    """Tiny LocalMIM Swin: 16-d, window 3 (maps 24/12/6/3 at 96 px), heads on 12/6/3/3."""
    torch.manual_seed(0)
    widths, strides = [32, 64, 128, 128], [8, 16, 32, 32]
    if target == 'hog':
        tgts = [dict(type='LocalMIMHOGGenerator', cell=s, nbins=9) for s in strides]
        dims = [27] * 4
    else:
        tgts = [dict(type='PixelTargetGenerator', cell=s, norm_pix=True) for s in strides]
        dims = [3 * s * s for s in strides]
    model = MODELS.build(dict(
        type='LocalMIM',
        backbone=dict(type='GreenSwinTransformer',
                      arch=dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4]),
                      img_size=size, window_size=size // 32, drop_path_rate=0.0,
                      out_indices=(0, 1, 2, 3), out_after_downsample=True,
                      norm_cfg=dict(type='LN', eps=1e-6), attn_backend='sdpa'),
        necks=[dict(type='MAEGridDecoder', in_channels=c, embed_dims=16, depth=1, num_heads=4,
                    pred_dims=d) for c, d in zip(widths, dims)],
        heads=[dict(type='CellReconstructionHead', target_generator=t) for t in tgts],
        data_preprocessor=dict(mean=MEAN, std=STD, to_rgb=True), **kw))
    model.init_weights()
    assert isinstance(model, LocalMIM)
    return model


@pytest.mark.parametrize('target', ['hog', 'pixel'])
def test_loss_is_the_sum_of_head_losses_on_their_own_grids(target):
    model = tiny_localmim(target=target, mask_seed=5)
    assert model.strides == [8, 16, 32, 32] and model.grid_factors == [4, 2, 1, 1]
    x = torch.randn(2, 3, 96, 96)
    losses = model.loss(x)
    assert sorted(losses) == ['loss_0', 'loss_1', 'loss_2', 'loss_3']
    # the same step by hand: GreenMIM's mask, backbone, decoder k on mask repeated to its grid
    mask = draw_unit_mask((3, 3), 0.75, 5, 0, 0)
    feats = model.backbone(x, mask=mask)
    n = int((~mask).sum())
    assert [tuple(f.shape[1:]) for f in feats] == [(16 * n, 32), (4 * n, 64), (n, 128), (n, 128)]
    for k, (f, grid) in enumerate(zip(feats, [12, 6, 3, 3])):
        cells = mask.repeat_interleave(grid // 3, 0).repeat_interleave(grid // 3, 1)
        pred = model.neck[k](f, cells)
        assert pred.shape == (2, grid * grid, model.head[k].out_channels)
        ref = model.head[k].loss(pred, x, cells)
        torch.testing.assert_close(losses[f'loss_{k}'], ref, rtol=1e-6, atol=0)


def test_loss_weights_scale_each_head():
    x = torch.randn(2, 3, 96, 96)
    plain = tiny_localmim(mask_seed=1).loss(x)
    weighted = tiny_localmim(mask_seed=1, loss_weights=[1.0, 0.5, 2.0, 0.0]).loss(x)
    for k, w in enumerate([1.0, 0.5, 2.0, 0.0]):
        torch.testing.assert_close(weighted[f'loss_{k}'], w * plain[f'loss_{k}'])


def test_backward_reaches_backbone_every_decoder_and_norm():
    model = tiny_localmim()
    losses = model.loss(torch.randn(2, 3, 96, 96))
    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    names = ['backbone.patch_embed.projection.weight',
             'backbone.stages.0.blocks.1.attn.w_msa.relative_position_bias_table',
             'backbone.stages.0.downsample.reduction.weight',
             'backbone.stages.3.blocks.0.ffn.layers.0.0.weight']
    for k in range(4):
        names += [f'backbone.norm{k}.weight', f'neck.{k}.mask_token',
                  f'neck.{k}.decoder_blocks.0.attn.qkv.weight', f'neck.{k}.decoder_pred.weight']
    for name in names:
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name


def test_masks_and_exact_resume_are_greenmims(monkeypatch):
    monkeypatch.setattr(greenmim_module, 'get_rank', lambda: 0)
    a = tiny_localmim(mask_seed=7)
    run = [a.next_mask((96, 96)) for _ in range(4)]
    assert all(torch.equal(m, draw_unit_mask((3, 3), 0.75, 7, 0, s)) for s, m in enumerate(run))
    b = tiny_localmim(mask_seed=7)
    b.next_mask((96, 96))
    b.next_mask((96, 96))
    c = tiny_localmim(mask_seed=7)
    c.load_state_dict(b.state_dict())
    assert all(torch.equal(c.next_mask((96, 96)), m) for m in run[2:])


def test_predict_heads_leaves_the_step_alone():
    model = tiny_localmim().eval()
    preds, targets, mask = model.predict_heads(torch.randn(1, 3, 96, 96), seed=3)
    assert model._step == 0 and torch.equal(mask, draw_unit_mask((3, 3), 0.75, 3, 0, 0))
    assert [p.shape for p in preds] == [t.shape for t in targets]


def test_build_errors_are_clear():
    with pytest.raises(ValueError, match='one decoder, head and loss weight per backbone'):
        tiny_localmim(loss_weights=[1.0, 1.0])
    cfg = dict(type='CellReconstructionHead',
               target_generator=dict(type='LocalMIMHOGGenerator', cell=16, nbins=9))
    with pytest.raises(ValueError, match='head 0: target cell 16 px differs from the output '
                       'stride 8'):
        _rebuild_with(heads=[cfg] * 4)
    with pytest.raises(ValueError, match='head 0: decoder predicts 5 values per cell, the '
                       'target has 27'):
        _rebuild_with(pred_dims=5)


def _rebuild_with(heads=None, pred_dims=None):
    model = tiny_localmim()
    cfg = dict(type='LocalMIM', backbone=model.backbone,
               necks=list(model.neck), heads=heads or list(model.head))
    if pred_dims is not None:
        cfg['necks'] = [MAEGridDecoder(in_channels=32, pred_dims=pred_dims, embed_dims=16,
                                       depth=0, num_heads=4)] + list(model.neck)[1:]
    return MODELS.build(cfg)


# ----------------------------------------------------------------------------- configs
PAPER = {
    'localmim_swin-base-w7_8xb256-amp-400e_in1k-224px_hog.py': ('hog', 400, 40, 'base'),
    'localmim_swin-base-w7_8xb256-amp-100e_in1k-224px_hog.py': ('hog', 100, 10, 'base'),
    'localmim_swin-base-w7_8xb256-amp-400e_in1k-224px_pixel.py': ('pixel', 400, 40, 'base'),
    'localmim_swin-base-w7_8xb256-amp-100e_in1k-224px_pixel.py': ('pixel', 100, 10, 'base'),
    'localmim_swin-large-w14_8xb128-accu4-amp-800e_in1k-224px_hog.py': ('hog', 800, 40, 'large'),
}


@pytest.mark.parametrize('name', sorted(PAPER))
def test_paper_configs(name):
    target, epochs, warmup, arch = PAPER[name]
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain', name))
    m = cfg.model
    assert m.type == 'LocalMIM' and m.mask_ratio == 0.75 and m.backbone.arch == arch
    assert m.backbone.out_indices == (0, 1, 2, 3) and m.backbone.out_after_downsample
    assert m.backbone.norm_cfg == dict(type='LN', eps=1e-6)
    c = 2 * (128 if arch == 'base' else 192)
    assert [n.in_channels for n in m.necks] == [c, 2 * c, 4 * c, 4 * c]
    assert [(n.embed_dims, n.depth, n.num_heads, n.mlp_ratio) for n in m.necks] == \
        [(64, 1, 4, 4), (128, 1, 4, 4), (128, 1, 4, 4), (128, 1, 4, 4)]
    tgts = [h.target_generator for h in m.heads]
    assert [t.cell for t in tgts] == [8, 16, 32, 32]
    if target == 'hog':
        assert all(t.type == 'LocalMIMHOGGenerator' and t.nbins == 18 and t.gradient_bias
                   for t in tgts)
        assert [n.pred_dims for n in m.necks] == [54] * 4
    else:
        assert all(t.type == 'PixelTargetGenerator' and t.norm_pix for t in tgts)
        assert [n.pred_dims for n in m.necks] == [192, 768, 3072, 3072]
    assert cfg.train_cfg.max_epochs == epochs
    warm, cos = cfg.param_scheduler
    assert (warm.end, cos.begin, cos.end, cos.eta_min) == (warmup, warmup, epochs, 0.0)
    assert cfg.optim_wrapper.type == 'AutocastOptimWrapper' and cfg.optim_wrapper.dtype == 'bfloat16'
    assert cfg.optim_wrapper.optimizer.betas == (0.9, 0.95)
    assert cfg.auto_scale_lr == dict(base_batch_size=256, enable=True)
    gpus_batch = 8 * cfg.train_dataloader.batch_size
    accum = cfg.optim_wrapper.get('accumulative_counts', 1)
    # the lr at 256 images is blr 1e-4; tools/train.py's auto_scale_lr counts accumulation
    # (GreenRunner, tests/test_runner.py) -> blr x (images per update) / 256
    assert cfg.optim_wrapper.optimizer.lr == 1e-4
    if arch == 'large':
        assert [s['window_size'] for s in m.backbone.stage_cfgs] == [14, 14, 14, 7]
        assert gpus_batch * accum == 4096


def test_swin_base_config_builds_and_its_heads_fit():
    """The Swin-B HOG config with shallow stages (same widths): one loss step at 224 px."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain', sorted(PAPER)[2]))
    cfg.model.backbone.arch = dict(embed_dims=128, depths=[1, 1, 1, 1],
                                   num_heads=[4, 8, 16, 32])
    cfg.model.backbone.attn_backend = 'sdpa'
    model = MODELS.build(cfg.model)
    assert model.grid_factors == [4, 2, 1, 1]
    losses = model.loss(torch.randn(1, 3, 224, 224))
    assert sorted(losses) == ['loss_0', 'loss_1', 'loss_2', 'loss_3']
    assert all(torch.isfinite(v) for v in losses.values())


def test_nano_demo_config_builds_and_steps():
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain', 'localmim_swin-nano_demo_128px.py'))
    assert cfg.train_cfg.max_epochs == 6 and cfg.param_scheduler[1].end == 6
    cfg.model.backbone.attn_backend = 'sdpa'
    model = MODELS.build(cfg.model)
    assert model.strides == [8, 16, 32, 32] and model.grid_factors == [4, 2, 1, 1]
    losses = model.loss(torch.randn(2, 3, 128, 128))
    assert sorted(losses) == ['loss_0', 'loss_1', 'loss_2', 'loss_3']


def test_demo_config_resume_reproduces_an_uninterrupted_run(demo_data_factory, tmp_path):
    """Shipped pipeline (tools/train.py, Runner): 2 epochs vs 1 epoch + --resume give the same
    logged total loss at every iteration (masks from the step buffer, HOG targets, decoders)."""
    from test_greenmim import run_train
    data = demo_data_factory('lm_resume', train_per_class=2, val_per_class=1)
    cfg = osp.join(ROOT, 'configs', 'pretrain', 'localmim_swin-nano_demo_128px.py')
    opts = ('model.backbone.arch.depths=[1,1,1,1]', )
    run = dict(config=cfg, options=opts)
    full = run_train(tmp_path / 'full', data, 2, tag='_lm_full', **run)
    run_train(tmp_path / 'first', data, 1, tag='_lm_first', **run)
    resumed = run_train(tmp_path / 'resumed', data, 2, resume=str(tmp_path / 'first' / 'epoch_1.pth'),
                        tag='_lm_resumed', **run)
    half = len(full) // 2
    assert sorted(resumed) == list(range(half + 1, 2 * half + 1))
    for it, loss in resumed.items():
        assert loss == pytest.approx(full[it], abs=1e-6), it

"""LocalMIM on ViT: the MAEViT masked path with intermediate outputs, the scale decoders, the
per-sample masks and loss weights, the algorithm and its config.

References: mmpretrain's own ``MAEViT`` masked forward (same weights, same mask), loops over
samples and cells, the head's own loss fed by hand. fp32 tolerances 1e-5.
"""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmpretrain.models.selfsup import MAEViT

import greenmim_mm  # noqa: F401
from greenmim_mm.models.algorithms import LocalMIMViT
from greenmim_mm.models.algorithms import localmim_vit as vit_module
from greenmim_mm.models.algorithms.localmim_vit import cell_weights
from greenmim_mm.models.backbones import LocalMIMMAEViT
from greenmim_mm.models.backbones.localmim_vit import random_patch_masks
from greenmim_mm.models.necks import LocalMIMViTDecoder
from greenmim_mm.models.necks.grid_decoder import grid_sincos_embedding
from greenmim_mm.registry import MODELS
from test_convert_checkpoint import one_thread  # noqa: F401 (autouse: one intra-op thread)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ARCH = dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64)
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def test_visible_path_equals_mmpretrain_maevit_up_to_token_order():
    """Same weights, MAEViT's own random mask: our outputs are MAE's tokens in raster order."""
    torch.manual_seed(0)
    theirs = MAEViT(arch=ARCH, img_size=64, patch_size=16, out_indices=[3])
    theirs.init_weights()
    ours = LocalMIMMAEViT(arch=ARCH, img_size=64, patch_size=16, out_indices=[1, 3])
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.eval(), ours.eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.manual_seed(5)
        latent, mask, ids_restore = theirs(x)
        feats = ours(x, mask=mask.bool())
    assert [tuple(f.shape) for f in feats] == [(3, 5, 32), (3, 5, 32)]
    keep = torch.argsort(ids_restore, dim=1)[:, :4]  # MAE's ids_keep, in noise order
    order = torch.argsort(keep, dim=1)  # -> ascending raster order
    ref = torch.cat([latent[:, :1], torch.gather(latent[:, 1:], 1,
                                                 order[..., None].expand(-1, -1, 32))], 1)
    torch.testing.assert_close(ours.ln1(feats[-1]), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='same, non-zero number of visible'):
        bad = mask.bool().clone()
        bad[0, :] = True
        ours(x, mask=bad)


def test_random_patch_masks_are_per_sample_and_keep_a_quarter():
    gen = torch.Generator().manual_seed(0)
    masks = random_patch_masks(4, 196, 0.75, gen)
    assert masks.shape == (4, 196) and masks.dtype == torch.bool
    assert (~masks).sum(1).tolist() == [49] * 4
    assert len({tuple(m.tolist()) for m in masks}) == 4


def test_cell_weights_repeat_or_average():
    mask = torch.rand(2, 4, 4) > 0.5
    for scale in (4, 2, 1):
        w = cell_weights(mask, scale)
        assert w.shape == (2, 4 * scale, 4 * scale)
        for r in range(4 * scale):
            for c in range(4 * scale):
                assert torch.equal(w[:, r, c], mask[:, r // scale, c // scale].float())
    coarse = cell_weights(mask, 0.5)
    for r in range(2):
        for c in range(2):
            ref = mask[:, 2 * r:2 * r + 2, 2 * c:2 * c + 2].float().mean((1, 2))
            torch.testing.assert_close(coarse[:, r, c], ref)


def test_decoder_places_each_samples_tokens_at_their_own_patches():
    torch.manual_seed(0)
    dec = LocalMIMViTDecoder(in_channels=8, pred_dims=6, scale=1, embed_dims=8, depth=0,
                             num_heads=2)
    dec.init_weights()
    mask = random_patch_masks(2, 16, 0.75, torch.Generator().manual_seed(1)).view(2, 4, 4)
    tokens = torch.randn(2, 5, 8)
    placed = dec.place(tokens, mask)
    pos = grid_sincos_embedding((4, 4), 8)
    for b in range(2):
        torch.testing.assert_close(placed[b, 0], tokens[b, 0])
        k = 1
        for u, hidden in enumerate(mask[b].flatten().tolist()):
            want = dec.mask_token[0, 0] if hidden else tokens[b, k]
            k += 0 if hidden else 1
            torch.testing.assert_close(placed[b, 1 + u], want + pos[u], rtol=0, atol=1e-6)


@pytest.mark.parametrize('scale,grid', [(4, 16), (2, 8), (1, 4), (0.5, 2)])
def test_decoder_output_grid_per_scale(scale, grid):
    torch.manual_seed(0)
    dec = LocalMIMViTDecoder(in_channels=32, pred_dims=27, scale=scale, embed_dims=16,
                             num_heads=2)
    mask = random_patch_masks(2, 16, 0.75).view(2, 4, 4)
    out = dec(torch.randn(2, 5, 32), mask)
    assert out.shape == (2, grid * grid, 27)
    if scale == 0.5:  # average pool, then the 1x1 predictor: linear in the pooled map
        assert len(dec.rescale) == 1 and isinstance(dec.rescale[0], torch.nn.AvgPool2d)
    n_deconv = sum(isinstance(m, torch.nn.ConvTranspose2d) for m in dec.rescale)
    assert n_deconv == {4: 2, 2: 1, 1: 0, 0.5: 0}[scale]


def tiny_vit_localmim(target='hog', **kw):
    torch.manual_seed(0)
    scales, cells = [4.0, 2.0, 1.0, 0.5], [4, 8, 16, 32]
    if target == 'hog':
        tgts, dims = [dict(type='LocalMIMHOGGenerator', cell=c, nbins=9) for c in cells], [27] * 4
    else:
        tgts = [dict(type='PixelTargetGenerator', cell=c) for c in cells]
        dims = [3 * c * c for c in cells]
    model = MODELS.build(dict(
        type='LocalMIMViT',
        backbone=dict(type='LocalMIMMAEViT', arch=ARCH, img_size=64, patch_size=16,
                      out_indices=[0, 1, 2, 3]),
        necks=[dict(type='LocalMIMViTDecoder', in_channels=32, pred_dims=d, scale=s,
                    embed_dims=16, num_heads=2) for s, d in zip(scales, dims)],
        heads=[dict(type='CellReconstructionHead', target_generator=t) for t in tgts],
        data_preprocessor=dict(mean=MEAN, std=STD, to_rgb=True), **kw))
    model.init_weights()
    assert isinstance(model, LocalMIMViT)
    return model


def test_loss_is_the_sum_of_weighted_head_losses(monkeypatch):
    monkeypatch.setattr(vit_module, 'get_rank', lambda: 0)
    model = tiny_vit_localmim(mask_seed=3)
    x = torch.randn(2, 3, 64, 64)
    losses = model.loss(x)
    assert sorted(losses) == ['loss_0', 'loss_1', 'loss_2', 'loss_3']
    mask = model.draw_masks(2, 3, 0, 0)
    assert not torch.equal(mask[0], mask[1])  # per-sample masks
    feats = model.backbone(x, mask=mask.flatten(1))
    for k, scale in enumerate([4, 2, 1, 0.5]):
        pred = model.neck[k](feats[k], mask)
        weight = cell_weights(mask, scale)
        torch.testing.assert_close(losses[f'loss_{k}'], model.head[k].loss(pred, x, weight))
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad and not name.startswith('backbone.ln1'):
            assert p.grad is not None, name


def test_masks_resume_exactly(monkeypatch):
    monkeypatch.setattr(vit_module, 'get_rank', lambda: 0)
    a = tiny_vit_localmim(mask_seed=9)
    run = [a.next_mask(2) for _ in range(4)]
    b = tiny_vit_localmim(mask_seed=9)
    b.next_mask(2), b.next_mask(2)
    c = tiny_vit_localmim(mask_seed=9)
    c.load_state_dict(b.state_dict())
    assert all(torch.equal(c.next_mask(2), m) for m in run[2:])
    monkeypatch.setattr(vit_module, 'get_rank', lambda: 1)
    assert not torch.equal(tiny_vit_localmim(mask_seed=9).next_mask(2), run[0])


def test_build_errors():
    with pytest.raises(ValueError, match='one decoder, head and loss weight'):
        tiny_vit_localmim(loss_weights=[1.0])


def test_vit_base_config():
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain',
                                   'localmim_vit-base-p16_8xb256-amp-1600e_in1k-224px_hog.py'))
    m = cfg.model
    assert m.type == 'LocalMIMViT' and m.backbone.out_indices == [1, 3, 9, 11]
    assert [n.scale for n in m.necks] == [4.0, 2.0, 1.0, 0.5]
    assert all(n.embed_dims == 256 and n.num_heads == 8 and n.depth == 1 for n in m.necks)
    assert [h.target_generator.cell for h in m.heads] == [4, 8, 16, 32]
    assert all(h.target_generator.nbins == 9 and not h.target_generator.get('gradient_bias')
               for h in m.heads)
    assert cfg.train_cfg.max_epochs == 1600 and cfg.optim_wrapper.optimizer.lr == 2e-4
    cfg.model.backbone.arch = dict(ARCH, num_layers=12)  # ViT-B depth, narrow
    cfg.model.necks = [dict(n, in_channels=32) for n in cfg.model.necks]
    model = MODELS.build(cfg.model)
    assert isinstance(model, LocalMIMViT)
    out = model.loss(torch.randn(1, 3, 224, 224))
    assert all(torch.isfinite(v) for v in out.values())

"""Decoders asked for the masked cells only (the cells a masked-cell loss reads).

Reference: the same module run on the whole grid, then indexed at those cells. Decoder-level
comparisons run in fp64 (1e-12: the same operations on fewer rows, only the matmul blocking
differs). The heads compute their loss in fp32 (``pred.float()``, fp32 targets), so losses and
parameter gradients of whole algorithms compare at fp32 tolerance (rtol 1e-6 / 1e-5).
"""
import pytest
import torch
from mmpretrain.models.backbones.vision_transformer import TransformerEncoderLayer

import greenmim_mm  # noqa: F401
from greenmim_mm.models.algorithms import draw_unit_mask
from greenmim_mm.models.heads import CellReconstructionHead
from greenmim_mm.models.necks import LinearUnitDecoder, MAEGridDecoder
from greenmim_mm.models.necks.grid_decoder import (block_at_cells, decode_cells,
                                                   masked_cell_index)
from greenmim_mm.models.target_generators import LocalMIMHOGGenerator, PixelTargetGenerator
from greenmim_mm.ops import random_unit_mask, upsample_mask
from test_convert_checkpoint import one_thread  # noqa: F401 (autouse: one intra-op thread)
from test_greenmim import tiny_greenmim
from test_localmim import tiny_localmim


def unit_cells(units=(3, 3), ratio=0.75, factor=2, seed=2):
    return upsample_mask(random_unit_mask(units, ratio, torch.Generator().manual_seed(seed)),
                         factor)


def test_masked_cell_index_is_the_raster_order_of_masked_cells():
    mask = torch.tensor([[True, False, True], [False, True, True]])
    assert masked_cell_index(mask).tolist() == [0, 2, 4, 5]


@pytest.mark.parametrize('layer_scale', [0.0, 0.1])
def test_block_at_cells_equals_the_full_block_at_those_rows(layer_scale):
    torch.manual_seed(0)
    block = TransformerEncoderLayer(16, 4, 64, qkv_bias=True,
                                    layer_scale_init_value=layer_scale).double()
    block.init_weights()
    x = torch.randn(2, 36, 16, dtype=torch.float64, requires_grad=True)
    cells = masked_cell_index(unit_cells())
    got = block_at_cells(block, x, cells)
    ref = block(x).index_select(1, cells)
    assert got.shape == (2, len(cells), 16)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(got)
    grads = torch.autograd.grad(got, [x] + list(block.parameters()), g)
    refs = torch.autograd.grad(ref, [x] + list(block.parameters()), g)
    for a, b in zip(grads, refs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_block_at_cells_runs_other_blocks_in_full():
    block = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Softmax(dim=1)).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    cells = torch.tensor([1, 4])
    torch.testing.assert_close(block_at_cells(block, x, cells), block(x)[:, [1, 4]],
                               rtol=0, atol=0)


@pytest.mark.parametrize('depth', [0, 1, 2])
def test_grid_decoder_at_masked_cells_equals_its_full_output_there(depth):
    torch.manual_seed(0)
    dec = MAEGridDecoder(in_channels=12, pred_dims=54, embed_dims=16, depth=depth,
                         num_heads=4).double()
    dec.init_weights()
    mask = unit_cells()
    latent = torch.randn(2, int((~mask).sum()), 12, dtype=torch.float64)
    cells = masked_cell_index(mask)
    full = dec(latent, mask)
    got = dec(latent, mask, cells)
    assert got.shape == (2, len(cells), 54)
    torch.testing.assert_close(got, full.index_select(1, cells), rtol=0, atol=1e-12)
    torch.testing.assert_close(decode_cells(dec, latent, mask, cells), got, rtol=0, atol=0)


def test_linear_decoder_and_other_necks_at_masked_cells():
    torch.manual_seed(0)
    mask = unit_cells(factor=1)
    cells = masked_cell_index(mask)
    lin = LinearUnitDecoder(in_channels=8, unit=4).double()
    lin.init_weights()
    latent = torch.randn(2, int((~mask).sum()), 8, dtype=torch.float64)
    torch.testing.assert_close(lin(latent, mask, cells), lin(latent, mask)[:, cells],
                               rtol=0, atol=1e-12)

    class FullGridNeck(torch.nn.Module):  # a neck that knows nothing of ``cells``
        def forward(self, latent, mask):
            return lin(latent, mask) * 2

    neck = FullGridNeck()
    torch.testing.assert_close(decode_cells(neck, latent, mask, cells),
                               neck(latent, mask)[:, cells], rtol=0, atol=0)


@pytest.mark.parametrize('target', ['hog', 'pixel'])
def test_head_loss_at_masked_cells_equals_the_full_grid_loss(target):
    torch.manual_seed(0)
    gen = LocalMIMHOGGenerator(8, nbins=9) if target == 'hog' else PixelTargetGenerator(8)
    head = CellReconstructionHead(gen)
    imgs = torch.randn(2, 3, 48, 48)
    mask = unit_cells(factor=2)  # 6 x 6 cells of 8 px
    cells = masked_cell_index(mask)
    pred = torch.randn(2, 36, gen.out_channels)
    full = head.loss(pred, imgs, mask)
    torch.testing.assert_close(head.loss(pred[:, cells], imgs, mask, cells), full,
                               rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match=f'{len(cells)} cells'):
        head.loss(pred, imgs, mask, cells)  # the whole grid given as the masked cells


def full_grid_greenmim_loss(model, x, mask):
    """The loss with the decoder's predictions of every unit (the visible ones weigh 0)."""
    return model.head.loss(model.forward_masked(x, mask), x, mask)


def test_greenmim_loss_equals_the_full_grid_loss_and_gradients():
    model = tiny_greenmim(mask_seed=4)
    x = torch.randn(2, 3, 96, 96)
    inputs = []
    hook = model.neck.decoder_blocks[-1].ffn.register_forward_hook(
        lambda m, args, out: inputs.append(args[0].shape) and None)
    loss = model.loss(x)['loss']
    hook.remove()
    mask = draw_unit_mask((3, 3), 0.75, 4, 0, 0)
    # only the masked units pass the last block's MLP
    assert inputs == [(2, int(mask.sum()), 32)]
    ref = full_grid_greenmim_loss(model, x, mask)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=0)
    params = [p for p in model.parameters() if p.requires_grad]
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize('target', ['hog', 'pixel'])
def test_localmim_losses_equal_the_full_grid_losses_and_gradients(target):
    model = tiny_localmim(target=target, mask_seed=6)
    x = torch.randn(2, 3, 96, 96)
    losses = model.loss(x)
    mask = draw_unit_mask((3, 3), 0.75, 6, 0, 0)
    preds = model.forward_masked(x, mask)
    refs = {f'loss_{k}': head.loss(pred, x, cells) for k, (head, pred, cells) in
            enumerate(zip(model.head, preds, model.head_masks(mask)))}
    assert sorted(losses) == sorted(refs)
    for k in losses:
        torch.testing.assert_close(losses[k], refs[k], rtol=1e-6, atol=0)
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(sum(losses.values()), params)
    ref = torch.autograd.grad(sum(refs.values()), params)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)

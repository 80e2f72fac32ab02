"""Sparse geometry (k×k children, neighbours, scatter/gather) and the submanifold depthwise
convolution, against dense references.

Reference for the convolution: ``F.conv2d`` (depthwise, padding k//2) on the zero-filled map,
gathered at the visible positions. Tolerances: fp32 1e-5 (nine products of O(1) values), fp64
1e-12.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from greenmim_mm.ops import (SPARSE_CONV_MODES, child_index, gather_children, gather_tokens,
                             neighbour_index, random_unit_mask, scatter_tokens,
                             sparse_depthwise_conv, upsample_mask, visible_coords)


def unit_token_mask(grid, factor, ratio, seed):
    return upsample_mask(random_unit_mask(grid, ratio, torch.Generator().manual_seed(seed)),
                         factor).numpy()


def test_child_index_matches_brute_force_and_rejects_mixed_blocks():
    mask = unit_token_mask((3, 4), 4, 0.5, 0)                       # 12x16 grid, 4x4 units
    coords = visible_coords(mask)
    for k in (1, 2, 4):
        new_coords, children = child_index(coords, mask.shape, k)
        pos = {tuple(c): i for i, c in enumerate(coords.tolist())}
        expect_coords = [(r, c) for r in range(12 // k) for c in range(16 // k)
                         if not mask[r * k, c * k]]
        assert [tuple(c) for c in new_coords.tolist()] == expect_coords
        for (r, c), row in zip(expect_coords, children.tolist()):
            assert row == [pos[(r * k + i, c * k + j)] for i in range(k) for j in range(k)]
    with pytest.raises(ValueError, match='2x2 block mixes'):     # one token of a block hidden
        child_index(coords[:-1], mask.shape, 2)
    with pytest.raises(ValueError, match='8x8 block mixes'):     # blocks larger than a unit
        child_index(coords, (16, 16), 8)
    with pytest.raises(ValueError, match='cannot be split'):
        child_index(coords, mask.shape, 3)


def test_gather_children_is_unfold_order():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    coords = torch.from_numpy(visible_coords(np.zeros((8, 8), bool)))
    _, children = child_index(coords.numpy(), (8, 8), 2)
    tokens = x.flatten(2).transpose(1, 2)
    ours = gather_children(tokens, torch.from_numpy(children))
    unfold = F.unfold(x, 2, stride=2).transpose(1, 2)               # (B, 16, C*4)
    assert torch.equal(ours, unfold)


def test_scatter_gather_round_trip():
    mask = unit_token_mask((2, 3), 4, 0.5, 2)
    coords = torch.from_numpy(visible_coords(mask))
    x = torch.randn(2, len(coords), 5)
    dense = scatter_tokens(x, coords, mask.shape)
    assert dense.shape == (2, 5, 8, 12)
    assert torch.equal(dense[:, :, torch.from_numpy(mask)], torch.zeros(2, 5, int(mask.sum())))
    assert torch.equal(gather_tokens(dense, coords), x)


def test_neighbour_index_brute_force():
    mask = unit_token_mask((2, 2), 3, 0.5, 3)
    coords = visible_coords(mask)
    nbr = neighbour_index(coords, mask.shape)
    pos = {tuple(c): i for i, c in enumerate(coords.tolist())}
    for (r, c), row in zip(coords.tolist(), nbr.tolist()):
        expect = [pos.get((r + dr, c + dc), len(coords)) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
        assert row == expect


def reference_conv(x, coords, hw, weight, bias):
    dense = scatter_tokens(x, coords, hw)           # zero-filled, checked above
    out = F.conv2d(dense, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[-1])
    return gather_tokens(out, coords)


@pytest.mark.parametrize('mode', SPARSE_CONV_MODES)
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize('kernel', [3, 5])
@pytest.mark.parametrize('case', ['units', 'random', 'one'])
def test_sparse_depthwise_conv_equals_conv_on_zero_filled_map(mode, dtype, tol, kernel, case):
    gen = torch.Generator().manual_seed(kernel)
    if case == 'units':
        mask = unit_token_mask((3, 4), 4, 0.75, 4)
    elif case == 'random':                            # any visible set works (submanifold)
        mask = (torch.rand(11, 13, generator=gen) < 0.6).numpy()
    else:
        mask = np.ones((6, 7), bool)
        mask[5, 0] = False
    coords = torch.from_numpy(visible_coords(mask))
    c = 6
    x = torch.randn(2, len(coords), c, dtype=dtype, generator=gen, requires_grad=True)
    weight = torch.randn(c, 1, kernel, kernel, dtype=dtype, generator=gen, requires_grad=True)
    bias = torch.randn(c, dtype=dtype, generator=gen, requires_grad=True)
    nbr = torch.from_numpy(neighbour_index(coords.numpy(), mask.shape, kernel))
    ours = sparse_depthwise_conv(x, coords, mask.shape, weight, bias, nbr, mode)
    ref = reference_conv(x, coords, mask.shape, weight, bias)
    assert ours.shape == (2, len(coords), c)
    assert (ours - ref).abs().max().item() <= tol
    w = torch.randn(ours.shape, dtype=dtype, generator=gen)
    g_ours = torch.autograd.grad((ours * w).sum(), (x, weight, bias))
    g_ref = torch.autograd.grad((ref * w).sum(), (x, weight, bias))
    assert max((a - b).abs().max().item() for a, b in zip(g_ours, g_ref)) <= tol * 10


def test_auto_mode_picks_the_gather_at_small_visible_fractions():
    from greenmim_mm.ops.sparse_conv import GATHER_MAX_VISIBLE, resolve_mode
    assert resolve_mode('auto', 12, (7, 7)) == 'gather'  # ratio 0.75 at 224 px
    assert resolve_mode('auto', 24, (7, 7)) == 'dense'   # ratio 0.5
    assert resolve_mode('auto', int(GATHER_MAX_VISIBLE * 100), (10, 10)) == 'gather'
    assert resolve_mode('auto', int(GATHER_MAX_VISIBLE * 100) + 1, (10, 10)) == 'dense'
    assert resolve_mode('dense', 1, (7, 7)) == 'dense' and resolve_mode('gather', 49, (7, 7)) == 'gather'
    # 'auto' through the op: with a neighbour index, the same result as the mode it resolves to
    coords = torch.tensor([[0, 0], [1, 2]])
    x = torch.randn(1, 2, 4, dtype=torch.float64)
    weight = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    nbr = torch.from_numpy(neighbour_index(coords.numpy(), (4, 4), 3))
    torch.testing.assert_close(sparse_depthwise_conv(x, coords, (4, 4), weight, None, nbr, 'auto'),
                               sparse_depthwise_conv(x, coords, (4, 4), weight, None, nbr, 'gather'),
                               rtol=0, atol=0)


def test_sparse_conv_errors():
    coords = torch.zeros(1, 2, dtype=torch.long)
    x = torch.randn(1, 1, 4)
    with pytest.raises(ValueError, match='sparse_conv must be one of'):
        sparse_depthwise_conv(x, coords, (2, 2), torch.randn(4, 1, 3, 3), mode='fast')
    with pytest.raises(ValueError, match='depthwise'):
        sparse_depthwise_conv(x, coords, (2, 2), torch.randn(4, 4, 3, 3), mode='dense')
    with pytest.raises(ValueError, match='neighbour index'):
        sparse_depthwise_conv(x, coords, (2, 2), torch.randn(4, 1, 3, 3), mode='gather')

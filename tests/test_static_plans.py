"""Static window-plan shapes per (mask ratio, image size) and torch.compile without recompiles.

References: brute force over every mask of small unit grids (the worst case the budgets claim),
window counts recomputed densely from the token mask, and eager runs for the compiled ones.
"""
import itertools

import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounter

from greenmim_mm.models import GreenSwinTransformer, GreenTwinsSVT
from greenmim_mm.ops import random_unit_mask
from greenmim_mm.ops.grouping import (first_fit_bound, packed_block_budget, static_budget,
                                      static_grouping, window_counts)
from greenmim_mm.ops.windows import FLEX_BLOCK

SWIN_TINY = dict(embed_dims=8, depths=[2, 2, 2, 2], num_heads=[1, 1, 1, 1])


def dense_counts(mask_units, t, window, shift):
    """Visible tokens per non-empty window, from the token mask itself (window ids from absolute
    coordinates, as Swin's cyclic shift with its region mask)."""
    tokens = np.kron(~mask_units, np.ones((t, t), dtype=bool))
    o = (window - shift) % window
    rows, cols = np.nonzero(tokens)
    key = ((rows + o) // window) * 10_000 + (cols + o) // window
    return np.unique(key, return_counts=True)[1]


def all_masks(units_hw, visible):
    """Every unit mask (True = masked) with ``visible`` visible units."""
    n = units_hw[0] * units_hw[1]
    for keep in itertools.combinations(range(n), visible):
        mask = np.ones(n, dtype=bool)
        mask[list(keep)] = False
        yield mask.reshape(units_hw)


@pytest.mark.parametrize('units_hw,t,window,shift,visible', [
    ((4, 4), 4, 3, 0, 4), ((4, 4), 4, 3, 1, 4), ((3, 4), 4, 7, 3, 3), ((4, 4), 2, 3, 1, 5),
    ((4, 4), 8, 7, 3, 4), ((3, 3), 8, 7, 0, 2),
])
def test_budgets_hold_for_every_mask(units_hw, t, window, shift, visible):
    """Over every mask: the counts fit the (G, g) budget by first-fit decreasing, the packed
    layout fits its block budget, and the budget's largest window count is attained."""
    n_groups, g = static_budget(units_hw, t, window, shift, visible)
    blocks = packed_block_budget(units_hw, t, window, shift, visible, FLEX_BLOCK)
    largest = 0
    for mask in all_masks(units_hw, visible):
        counts = dense_counts(mask, t, window, shift)
        assert sorted(window_counts(mask, t, window, shift)) == sorted(counts.tolist())
        groups = static_grouping(counts.tolist(), (n_groups, g))
        assert len(groups) == n_groups
        assert sorted(w for grp in groups for w in grp) == list(range(len(counts)))
        assert max(counts[grp].sum() for grp in groups) <= g
        assert int((-(-counts // FLEX_BLOCK)).sum()) <= blocks
        largest = max(largest, int(counts.max()))
    assert g >= largest
    # g is the smallest attention-work choice among the feasible capacities it was chosen from
    total = visible * t * t
    assert n_groups * g * g <= first_fit_bound(total, largest, largest, total) * largest ** 2


def test_first_fit_bound_against_brute_force():
    """The bound is never exceeded by first-fit decreasing on any multiset of small items."""
    for g, largest in [(6, 4), (7, 7), (9, 5), (10, 3)]:
        for k in range(1, 8):
            for items in itertools.combinations_with_replacement(range(1, largest + 1), k):
                counts = sorted(items, reverse=True)
                loads = []
                for c in counts:  # first fit decreasing, written out
                    for i, load in enumerate(loads):
                        if load + c <= g:
                            loads[i] += c
                            break
                    else:
                        loads.append(c)
                assert len(loads) <= first_fit_bound(sum(counts), largest, g, k)


def test_static_grouping_refuses_counts_beyond_budget():
    with pytest.raises(RuntimeError, match='static budget'):
        static_grouping([5, 5, 5], (2, 6))
    with pytest.raises(ValueError, match='shift'):
        static_budget((2, 2), 2, 3, 3, 1)


def plan_shapes(geometry):
    """{(stage, plan key): {field: shape}} of every tensor of every plan."""
    out = {}
    for i, geo in enumerate(geometry):
        for key, plan in geo.plans.items():
            out[(i, key)] = {name: tuple(v.shape) for name, v in vars(plan).items()
                             if isinstance(v, torch.Tensor)}
    return out


def distinct_plan_shapes(model, size, ratio, n_masks, seed=0):
    """Distinct shape sets per plan over ``n_masks`` random masks."""
    gen = torch.Generator().manual_seed(seed)
    seen = {}
    for _ in range(n_masks):
        mask = random_unit_mask((size // 32, size // 32), ratio, gen)
        for key, shapes in plan_shapes(model.sparse_geometry(mask, (size, size))).items():
            seen.setdefault(key, set()).add(tuple(sorted(shapes.items())))
    return {key: len(v) for key, v in seen.items()}


@pytest.mark.parametrize('size,window', [(224, 7), (192, 6)])
@pytest.mark.parametrize('backend', ['sdpa', 'flex'])
def test_swin_b_plans_have_one_shape(size, window, backend):
    """Swin-B's windows (224 px: 7, 192 px: 6 as SimMIM's; the width does not change the
    geometry) at ratio 0.75: one shape per plan over 50 masks (the per-mask 'optimal' grouping
    gives several)."""
    if backend == 'flex':
        pytest.importorskip('torch.nn.attention.flex_attention')
    model = GreenSwinTransformer(arch=SWIN_TINY, img_size=size, window_size=window,
                                 attn_backend=backend)
    counts = distinct_plan_shapes(model, size, 0.75, 50)
    assert len(counts) == 8 and set(counts.values()) == {1}, counts
    if backend == 'sdpa':
        model.grouping = 'optimal'
        assert max(distinct_plan_shapes(model, size, 0.75, 50).values()) > 1


def test_twins_plans_have_one_shape():
    model = GreenTwinsSVT(arch='nano', attn_backend='sdpa')
    counts = distinct_plan_shapes(model, 128, 0.75, 50)
    assert counts and set(counts.values()) == {1}, counts


def compiles_over_masks(model, size, n_masks, ratio=0.75):
    """Compiled frames of ``model``'s sparse forward (geometry built outside) over ``n_masks``
    random masks; every output equals the eager one."""
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    x = torch.randn(1, 3, size, size)
    gen = torch.Generator().manual_seed(0)
    for _ in range(n_masks):
        mask = random_unit_mask((size // 32, size // 32), ratio, gen)
        geometry = model.sparse_geometry(mask, (size, size))
        got = compiled(x, mask=mask, geometry=geometry)
        want = model(x, mask=mask, geometry=geometry)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    return counter.frame_count


def test_compiled_sparse_swin_compiles_once():
    """torch.compile of the sparse encoder with the geometry passed in: one graph, no recompile
    over 20 masks (the 'optimal' grouping recompiled on mask-dependent shapes)."""
    torch.manual_seed(0)
    model = GreenSwinTransformer(arch=SWIN_TINY, img_size=128, window_size=4,
                                 attn_backend='sdpa', out_indices=(3, )).eval()
    assert compiles_over_masks(model, 128, 20) == 1

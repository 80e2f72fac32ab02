"""The packed FlexAttention layout: host-built BlockMask, contiguous captured tensors, compiled
flex, and the computed-score count of tools/attention_scores.py.

References: the same-window relation written out densely, the padded SDPA layout (exact against
dense Swin in test_green_swin.py) and brute-force score counts.
"""
import os

import numpy as np
import pytest
import torch

from greenmim_mm.ops import flex_available, random_unit_mask, upsample_mask, visible_coords
from greenmim_mm.ops.attention import (flex_window_attention, group_pairs,
                                        padded_window_attention)
from greenmim_mm.ops.windows import build_window_plan, stage_units, window_labels

pytestmark = pytest.mark.skipif(not flex_available(), reason='FlexAttention not in this torch')


def stage_plans(seed=0, ratio=0.5, window=3, shift=1, t=4, units=(4, 4)):
    """(coords, padded plan, packed plan) of one stage with a random unit mask."""
    mask = random_unit_mask(units, ratio, torch.Generator().manual_seed(seed))
    coords = visible_coords(upsample_mask(mask, t).numpy())
    su = stage_units((units[0] * t, units[1] * t), t, len(coords))
    return (coords, build_window_plan(coords, window, shift, 16, 'static', 'padded', su),
            build_window_plan(coords, window, shift, 16, 'static', 'packed', su))


def dense_block_mask(plan, side='kv'):
    """(L, L) bool (query, key): the scores the BlockMask keeps (full block pairs whole, partial
    ones through the same-window mask_mod), read from the ``side`` ('kv': per query block, 'q':
    per key block) arrays."""
    b, length = plan.block, plan.order.numel()
    wid = plan.window_id.numpy()
    keep = np.zeros((length, length), dtype=bool)
    for full in (True, False):
        name = ('full_' if full else '') + side
        nums = getattr(plan, f'{name}_num_blocks')[0, 0].numpy()
        idx = getattr(plan, f'{name}_indices')[0, 0].numpy()
        for i in range(length // b):
            for j in idx[i, :nums[i]]:
                rows, cols = slice(i * b, (i + 1) * b), slice(j * b, (j + 1) * b)
                keep[rows, cols] = True if full else wid[rows, None] == wid[None, cols]
    return keep if side == 'kv' else keep.T


@pytest.mark.parametrize('seed,shift', [(0, 0), (1, 1), (2, 1)])
def test_block_mask_is_exactly_same_window(seed, shift):
    coords, _, plan = stage_plans(seed, shift=shift)
    n = len(coords)
    order = plan.order.numpy()
    real = order < n
    labels = window_labels(coords, 3, shift)
    want = labels[order[real]][:, None] == labels[order[real]][None, :]
    for side in ('kv', 'q'):  # the q-side arrays describe the same mask, transposed
        keep = dense_block_mask(plan, side)
        assert np.array_equal(keep[np.ix_(real, real)], want)
        assert not keep[np.ix_(real, ~real)].any()  # no real query sees a padding key
    assert sorted(order[real]) == list(range(n))
    assert np.array_equal(plan.inverse.numpy()[order[real]], np.nonzero(real)[0])


def test_packed_plan_tensors_are_contiguous():
    _, _, plan = stage_plans()
    for name in ('order', 'inverse', 'window_id', 'rows', 'cols', 'kv_indices', 'q_indices'):
        assert getattr(plan, name).is_contiguous(), name


def attention_inputs(n, channels=16, heads=2, window=3, dtype=torch.float64):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, n, channels, generator=gen, dtype=dtype)
    weight = torch.randn(3 * channels, channels, generator=gen, dtype=dtype) / 4
    bias = torch.randn(3 * channels, generator=gen, dtype=dtype)
    table = torch.randn((2 * window - 1)**2, heads, generator=gen, dtype=dtype)
    return x, weight, bias, table, heads


@pytest.mark.parametrize('with_table', [True, False])
def test_flex_matches_padded_sdpa(with_table):
    coords, padded, packed = stage_plans(seed=4, ratio=0.25)
    x, weight, bias, table, heads = attention_inputs(len(coords))
    table = table if with_table else None
    with torch.no_grad():
        want = padded_window_attention(x, padded, weight, bias, table, heads, 0.3)
        got = flex_window_attention(x, packed, weight, bias, table, heads, 0.3, compiled=False)
    assert (got - want).abs().max() <= 1e-10


def test_flex_traces_in_one_graph():
    """The plan's tensors (captured by score_mod / mask_mod) and its BlockMask trace with
    torch.compile (AOT autograd, no kernel build) and give SDPA's result."""
    from torch._dynamo.testing import CompileCounterWithBackend
    coords, padded, packed = stage_plans(seed=5, ratio=0.25)
    x, weight, bias, table, heads = attention_inputs(len(coords), dtype=torch.float32)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend('aot_eager')
    fn = torch.compile(flex_window_attention, backend=counter, fullgraph=True)
    with torch.no_grad():
        got = fn(x, packed, weight, bias, table, heads, 0.3, compiled=False)
        want = padded_window_attention(x, padded, weight, bias, table, heads, 0.3)
    assert counter.frame_count == 1
    assert (got - want).abs().max() <= 1e-5


@pytest.mark.skipif(os.environ.get('GREENMIM_MM_SLOW_TESTS') != '1',
                    reason='builds the CPU FlexAttention kernel (minutes); set '
                           'GREENMIM_MM_SLOW_TESTS=1')
def test_compiled_flex_on_cpu_matches_sdpa():
    coords, padded, packed = stage_plans(seed=6, ratio=0.5)
    x, weight, bias, table, heads = attention_inputs(len(coords), dtype=torch.float32)
    with torch.no_grad():
        got = flex_window_attention(x, packed, weight, bias, table, heads, 0.3, compiled=True)
        want = padded_window_attention(x, padded, weight, bias, table, heads, 0.3)
    assert (got - want).abs().max() <= 1e-5


def test_score_counts_against_brute_force(load_tool):
    """tools/attention_scores.py: needed = same-window pairs, flex computed = pairs in the
    BlockMask's blocks, padded computed = G·g², counted here from dense masks."""
    tool = load_tool('attention_scores')
    coords, padded, packed = stage_plans(seed=7, ratio=0.5)
    labels = window_labels(coords, 3, 1)
    assert tool.needed_scores(coords, 3, 1) == int((labels[:, None] == labels[None, :]).sum())
    blocks = np.zeros((packed.order.numel() // packed.block, ) * 2, dtype=bool)
    for kind in ('kv', 'full_kv'):
        nums = getattr(packed, f'{kind}_num_blocks')[0, 0]
        idx = getattr(packed, f'{kind}_indices')[0, 0]
        for i in range(blocks.shape[0]):
            blocks[i, idx[i, :nums[i]].numpy()] = True
    assert tool.computed_scores(packed) == blocks.sum() * packed.block**2
    assert tool.computed_scores(padded) == group_pairs(padded)[0].numel()
    # the previous layout: 128-token tiles over window-sorted tokens
    sorted_labels = np.sort(labels)
    tiles = [set(sorted_labels[i:i + 128]) for i in range(0, len(labels), 128)]
    pairs = sum(bool(a & b) for a in tiles for b in tiles)
    assert tool.legacy_flex_scores(coords, 3, 1) == pairs * 128 * 128


def test_flex_wastes_less_than_twice_at_stage_0(load_tool):
    """Swin-B at 224 px, ratio 0.75: the packed layout computes < 2x the needed scores at
    stage 0 (the 128-tile layout: ~10x)."""
    rows = load_tool('attention_scores').stage_rows(224, 0.75, 10, 0, 7)
    for (stage, _, _), v in rows.items():
        if stage == 0:
            assert v[3] / v[0] < 2 and v[4] / v[0] > 5


def brute_force_block_arrays(window_id, block):
    """{name: (num (1, 1, nb) int32, indices (1, 1, nb, nb) int32)} of the four BlockMask sides,
    from the slots' windows alone: a (query block, key block) pair is kept when a real query
    slot and a key slot share a window; 'full' when every key slot of the key block is in the
    query block's window, else partial. Indices ascending, unused entries 0."""
    wid = window_id.reshape(-1, block)
    nb = len(wid)
    kind = np.zeros((nb, nb), dtype=np.int8)  # 0 none, 1 partial, 2 full
    for i in range(nb):
        for j in range(nb):
            same = (wid[i][:, None] == wid[j][None, :]) & (wid[i][:, None] >= 0)
            if same.any():
                kind[i, j] = 2 if (wid[j] == wid[i][wid[i] >= 0][0]).all() else 1
    out = {}
    for name, want, per_row in (('full_kv', 2, kind), ('kv', 1, kind), ('full_q', 2, kind.T),
                                ('q', 1, kind.T)):
        num = np.zeros((1, 1, nb), dtype=np.int32)
        idx = np.zeros((1, 1, nb, nb), dtype=np.int32)
        for i in range(nb):
            cols = np.nonzero(per_row[i] == want)[0]
            num[0, 0, i] = len(cols)
            idx[0, 0, i, :len(cols)] = cols
        out[name] = num, idx
    return out


@pytest.mark.parametrize('seed,ratio,window,shift,t,units', [
    (0, 0.5, 3, 1, 4, (4, 4)), (1, 0.25, 7, 3, 8, (4, 4)), (2, 0.75, 7, 0, 8, (7, 7)),
    (3, 0.6, 7, 3, 4, (6, 5))])
def test_block_arrays_equal_brute_force(seed, ratio, window, shift, t, units):
    """Every BlockMask array (counts, indices, their unused zero entries, dtype, shape) equals
    the brute-force construction from the slots' windows; blocks past the windows attend
    nothing. Also through a packed step plan (one buffer, views)."""
    from greenmim_mm.models.algorithms.step_plan import pack_plan
    _, _, plan = stage_plans(seed, ratio, window, shift, t, units)
    packed = pack_plan(dict(p=plan), 'cpu')
    moved = packed.to('cpu')['p']
    start, stop = packed.buffer.data_ptr(), packed.buffer.data_ptr() + packed.buffer.numel()
    for name in ('order', 'rows', 'kv_num_blocks', 'full_q_indices'):  # views of the buffer
        assert start <= getattr(moved, name).data_ptr() < stop, name
    want = brute_force_block_arrays(plan.window_id.numpy(), plan.block)
    for p in (plan, moved):
        for name, (num, idx) in want.items():
            got_num, got_idx = getattr(p, f'{name}_num_blocks'), getattr(p, f'{name}_indices')
            assert got_num.dtype == got_idx.dtype == torch.int32
            assert np.array_equal(got_num.numpy(), num), name
            assert np.array_equal(got_idx.numpy(), idx), name
        assert np.array_equal(p.window_id.numpy(), plan.window_id.numpy())

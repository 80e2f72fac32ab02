"""The window plans of ``build_geometry`` are exactly the plans of the plain algorithm (issue 18
item 3: the plan was made faster, its output must not change): every field of every stage, for
the padded (SDPA, static grouping) and packed (FlexAttention) layouts, Swin-B at 224 and 192 px.

Reference: the algorithm written out with loops per window and token: windows from absolute
coordinates numbered in raster order of the non-empty ones, tokens in raster order inside a
window; padded: first-fit decreasing of the window counts (ties in window order) into the static
budget's groups; packed: every window at a block boundary, the BlockMask's block lists.
"""
import numpy as np
import pytest
import torch

from greenmim_mm.ops import random_unit_mask, upsample_mask
from greenmim_mm.ops.grouping import packed_block_budget, static_budget
from greenmim_mm.ops.windows import FLEX_BLOCK, build_geometry


def reference_windows(coords, window, shift):
    """[[token index, ...] per non-empty window], windows in raster order."""
    o = (window - shift) % window
    windows = {}
    for i, (r, c) in enumerate(coords.tolist()):
        windows.setdefault(((r + o) // window, (c + o) // window), []).append(i)
    return [windows[k] for k in sorted(windows)]


def reference_padded(coords, window, shift, budget):
    n_groups, g = budget
    windows = reference_windows(coords, window, shift)
    by_size = sorted(range(len(windows)), key=lambda w: -len(windows[w]))
    bins, loads = [], []
    for w in by_size:
        b = next((b for b, load in enumerate(loads) if load + len(windows[w]) <= g), None)
        if b is None:
            bins.append([]), loads.append(0)
            b = len(bins) - 1
        bins[b].append(w)
        loads[b] += len(windows[w])
    n = len(coords)
    slots = np.full((n_groups, g), n)
    slot_window = -1 - np.arange(n_groups * g).reshape(n_groups, g)
    for gi, group in enumerate(bins):
        tokens = [(w, t) for w in group for t in windows[w]]
        for k, (w, t) in enumerate(tokens):
            slots[gi, k], slot_window[gi, k] = t, w
    inverse = np.zeros(n, dtype=np.int64)
    inverse[slots.ravel()[slots.ravel() < n]] = np.nonzero(slots.ravel() < n)[0]
    code = [[coords[t, 0] * (2 * window - 1) + coords[t, 1] if t < n else 0 for t in row]
            for row in slots]
    return dict(slots=slots, inverse=inverse, slot_window=slot_window, slot_code=np.array(code))


def reference_packed(coords, window, shift, nb, block=FLEX_BLOCK):
    windows = reference_windows(coords, window, shift)
    n, length = len(coords), nb * block
    out = dict(order=np.full(length, n), window_id=np.full(length, -1),
               rows=np.zeros(length, np.int64), cols=np.zeros(length, np.int64),
               inverse=np.zeros(n, np.int64))
    for name in ('kv', 'full_kv', 'q', 'full_q'):
        out[f'{name}_num_blocks'] = np.zeros((1, 1, nb), np.int32)
        out[f'{name}_indices'] = np.zeros((1, 1, nb, nb), np.int32)
    first = 0
    for w, tokens in enumerate(windows):
        for k, t in enumerate(tokens):
            slot = first * block + k
            out['order'][slot], out['window_id'][slot] = t, w
            out['rows'][slot], out['cols'][slot] = coords[t]
            out['inverse'][t] = slot
        blocks = list(range(first, first + -(-len(tokens) // block)))
        full = [b for b in blocks if (b - first + 1) * block <= len(tokens)]
        partial = [b for b in blocks if b not in full]
        for b in blocks:   # kv side: per query block its key blocks; q side: per key block
            for name, keys in (('full_kv', full), ('kv', partial),
                               ('full_q', blocks if b in full else []),
                               ('q', blocks if b in partial else [])):
                out[f'{name}_num_blocks'][0, 0, b] = len(keys)
                out[f'{name}_indices'][0, 0, b, :len(keys)] = keys
        first = blocks[-1] + 1
    return out


def reference_stage_coords(mask_tokens):
    coords = [np.argwhere(~mask_tokens)]
    for _ in range(3):
        m = mask_tokens = mask_tokens[::2, ::2]
        coords.append(np.argwhere(~m))
    return coords


@pytest.mark.parametrize('size', [224, 192])
@pytest.mark.parametrize('layout', ['padded', 'packed'])
def test_swin_b_plans_equal_the_plain_algorithm(size, layout):
    window, units = (7, size // 32) if size == 224 else (6, size // 32)
    gen = torch.Generator().manual_seed(size)
    for _ in range(25):
        unit_mask = random_unit_mask((units, units), 0.75, gen)
        tokens = upsample_mask(unit_mask, 8).numpy()
        geometry = build_geometry(tokens, [[(window, 0), (window, window // 2)]] * 4,
                                  (128, 256, 512, 1024), False, 'static', None, layout, 8)
        visible = int((~unit_mask).sum())
        for i, (geo, coords) in enumerate(zip(geometry, reference_stage_coords(tokens))):
            assert np.array_equal(geo.coords.numpy(), coords)
            t = 8 >> i
            for (w, s), plan in geo.plans.items():
                w, s = (w, 0) if geo.hw[0] == w else (w, s)   # Swin drops the shift there
                if layout == 'padded':
                    want = reference_padded(coords, w, s, static_budget(
                        (units, units), t, w, s, visible))
                else:
                    want = reference_packed(coords, w, s, packed_block_budget(
                        (units, units), t, w, s, visible, FLEX_BLOCK))
                assert (plan.window, plan.shift, plan.layout) == (w, s, layout)
                for name, value in want.items():
                    got = getattr(plan, name).numpy()
                    assert got.shape == value.shape and np.array_equal(got, value), name
                    assert getattr(plan, name).is_contiguous(), name
            if i < 3:
                child = np.array([[(2 * r + dr) * geo.hw[1] + 2 * c + dc
                                   for dr in (0, 1) for dc in (0, 1)]
                                  for r, c in reference_stage_coords(tokens)[i + 1].tolist()])
                flat = coords[:, 0] * geo.hw[1] + coords[:, 1]
                assert np.array_equal(flat[geo.children[2].numpy()], child)

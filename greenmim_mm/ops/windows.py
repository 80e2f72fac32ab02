"""Window attention layouts from absolute coordinates: window ids, grouped (padded) or packed plans.

The backbone-neutral part (visible coordinates per stage, k×k children, scatter/gather) is in
``geometry.py``; this file holds the window rules (Swin's shifted windows, Twins' LSA windows
with shift 0). Everything here runs once per forward pass on the CPU (numpy) from the
batch-shared mask, and is moved to the compute device in one transfer: no host-device
synchronisation happens per block.

Window partition (GreenMIM's windows from absolute coordinates): for window ``w`` and shift ``s`` a token at (r, c) lies in window
``((r + o) // w, (c + o) // w)`` with ``o = (w - s) % w``. Shifted windows therefore start at
rows/columns ``≡ s (mod w)``; the first and last windows are partial. This is exactly the partition
of Swin's cyclic shift plus its region mask, without any roll.

Relative position bias index of a query/key pair in one window (same formula as Swin's
``relative_position_index``): ``(dr + w - 1) * (2w - 1) + (dc + w - 1)`` with ``(dr, dc)`` the
coordinate difference query - key.
"""
import functools
from dataclasses import dataclass, fields
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .geometry import StageGeometry, child_index, visible_coords
from .grouping import (optimal_grouping, packed_block_budget, static_budget,
                       static_grouping, static_slot_starts)

GROUPING_POLICIES = ('static', 'optimal', 'window', 'single')

LAYOUTS = ('padded', 'packed')

# Tokens per FlexAttention block of the packed layout (the BlockMask's BLOCK_SIZE). Windows start
# at block boundaries, so a block never mixes windows; 16 keeps the computed scores of Swin-B's
# stage 0 at 224 px under 1.5x the needed ones (``tools/attention_scores.py``). The GPU kernel's
# tile must divide it (``attention.flex_kernel_options``).
FLEX_BLOCK = 16


# Rows of a packed plan's slot_table and of its block_num/block_idx (see ``WindowPlan``).
PACKED_SLOT_NAMES = ('order', 'window_id', 'rows', 'cols')
PACKED_BLOCK_NAMES = ('full_kv', 'kv', 'full_q', 'q')
_NUM_NAMES = tuple(f'{name}_num_blocks' for name in PACKED_BLOCK_NAMES)
_IDX_NAMES = tuple(f'{name}_indices' for name in PACKED_BLOCK_NAMES)


@dataclass
class WindowPlan:
    """Attention layout of one stage and shift parity (N visible tokens).

    Plain named tensors (plus three ints and a str), so a plan can be packed and moved generically.
    Only the layout of the attention backend in use is built (``layout``); the other's fields are
    None. With the 'static' grouping every shape depends only on (mask ratio, image size).

    Padded layout ('padded', SDPA backend; G groups of g slots):
        slots (G, g) long: token index of each slot; padding slots hold N (an appended zero row).
        inverse (N,) long: flat slot position (in G*g) of every token.
        rel_index (G, g, g) int32: bias-table row of each query/key slot pair (0 where not
            allowed).
        allowed (G, g, g) bool: True where a query slot may attend a key slot (same window; a
            padding slot attends only itself, so no softmax row is empty).
    Packed layout ('packed', FlexAttention backend; L = nb * ``block`` slots, no grouping): every
    window starts at a block boundary, so a block holds one window's tokens and padding.
        order (L,) long: token index of each slot (N for padding); inverse (N,) long: the slot of
        every token; window_id (L,) long: window of each slot (-1 for padding); rows, cols (L,)
        long (contiguous): slot coordinates (0 for padding).
        {,full_}{kv,q}_num_blocks (1, 1, nb) int32 and {,full_}{kv,q}_indices (1, 1, nb, nb)
        int32: FlexAttention's ``BlockMask`` arrays, built here on the host (a window's blocks
        attend each other; pairs whose key block is the window's partly filled last block are
        partial, i.e. apply the mask_mod).
        These are attributes (not fields): views of three fields, so a packed plan holds three
        tensors plus ``inverse`` instead of thirteen: slot_table (4, L) long (rows ``order``,
        ``window_id``, ``rows``, ``cols``), block_num (4, 1, 1, nb) and block_idx
        (4, 1, 1, nb, nb) int32 (rows ``PACKED_BLOCK_NAMES``). ``__post_init__`` makes the views
        (``step_plan``'s rebuild runs it too).
    """
    window: int
    shift: int
    layout: str
    slots: Optional[torch.Tensor] = None
    inverse: Optional[torch.Tensor] = None
    slot_window: Optional[torch.Tensor] = None
    slot_code: Optional[torch.Tensor] = None
    slot_table: Optional[torch.Tensor] = None
    block_num: Optional[torch.Tensor] = None
    block_idx: Optional[torch.Tensor] = None
    block: int = FLEX_BLOCK

    def __post_init__(self):
        """The packed layout's named views of ``slot_table``/``block_num``/``block_idx`` (None
        in the padded layout)."""
        rows = [None] * 4 if self.slot_table is None else [self.slot_table[i] for i in range(4)]
        num = [None] * 4 if self.block_num is None else [self.block_num[i] for i in range(4)]
        idx = [None] * 4 if self.block_idx is None else [self.block_idx[i] for i in range(4)]
        self.__dict__.update(zip(PACKED_SLOT_NAMES, rows))
        self.__dict__.update(zip(_NUM_NAMES, num))
        self.__dict__.update(zip(_IDX_NAMES, idx))

    def to(self, device) -> 'WindowPlan':
        """Copy the tensors to ``device`` (non-blocking)."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if isinstance(v, torch.Tensor):
                moved[k] = v.to(device, non_blocking=True)
        return WindowPlan(**moved)

    @property
    def padded_slots(self) -> int:
        """Slots the attention runs on (G*g padded, L packed)."""
        return int(self.slots.numel() if self.layout == 'padded' else self.order.numel())


def effective_window(hw: Sequence[int], window: int, shift: int,
                     pad_small_map: bool = False) -> Tuple[int, int]:
    """Window and shift Swin (mmpretrain) really uses on a map of size ``hw``.

    A map whose short side equals the window drops the shift (as the original Swin does) unless
    ``pad_small_map``. A map smaller than the window is an error unless ``pad_small_map``.
    """
    short = min(hw)
    if short == window and not pad_small_map:
        return window, 0
    if short < window and not pad_small_map:
        raise ValueError(
            f'A stage map of {hw[0]}x{hw[1]} tokens is smaller than its window size {window}. '
            f'Give per-stage windows, e.g. stage_cfgs=[dict(window_size=w) for w in '
            f'(14, 14, 14, 7)], use a larger input, or set pad_small_map=True.')
    return window, shift


def window_labels(coords: np.ndarray, window: int, shift: int) -> np.ndarray:
    """(N, 2) coords -> (N,) dense window ids, numbered in raster order of the windows."""
    off = (window - shift) % window
    wr = (coords[:, 0] + off) // window
    wc = (coords[:, 1] + off) // window
    if not len(coords):
        return np.zeros(0, dtype=np.int64)
    key = wr * (int(wc.max()) + 1) + wc
    present = np.zeros(int(key.max()) + 1, dtype=np.int64)
    present[key] = 1
    return (np.cumsum(present) - 1)[key]  # rank of the key among the present ones


@dataclass(frozen=True)
class StageUnits:
    """The mask-unit structure of a stage grid, which fixes the static budgets: ``tokens`` per
    unit side and ``visible`` units (N = visible * tokens², constant for a mask ratio)."""
    hw: Tuple[int, int]
    tokens: int
    visible: int

    @property
    def units_hw(self) -> Tuple[int, int]:
        return (self.hw[0] // self.tokens, self.hw[1] // self.tokens)


def stage_units(hw: Sequence[int], tokens_per_unit: int, n_visible: int) -> StageUnits:
    """StageUnits of a grid ``hw`` with ``n_visible`` visible tokens; ValueError if the grid or
    the token count is not made of whole units."""
    t = int(tokens_per_unit)
    if t < 1 or hw[0] % t or hw[1] % t or n_visible % (t * t):
        raise ValueError(f'a {hw[0]}x{hw[1]} grid with {n_visible} visible tokens is not made of '
                         f'whole {t}x{t} mask units')
    return StageUnits((int(hw[0]), int(hw[1])), t, n_visible // (t * t))


def choose_groups(counts: List[int], channels: int, policy: str,
                  units: Optional[StageUnits] = None, window: int = 0,
                  shift: int = 0) -> Tuple[int, List[List[int]]]:
    """Group size and groups (lists of window indices) for the given policy ('static' needs
    ``units`` and the window: its (G, g) is :func:`~greenmim_mm.ops.grouping.static_budget`)."""
    if policy == 'static':
        if units is None:
            raise ValueError("grouping='static' needs the stage's mask units (StageUnits)")
        budget = static_budget(units.units_hw, units.tokens, window, shift, units.visible)
        return budget[1], static_grouping(counts, budget)
    if policy == 'optimal':
        return optimal_grouping(counts, channels)
    if policy == 'window':
        return max(counts), [[i] for i in range(len(counts))]
    if policy == 'single':
        return sum(counts), [list(range(len(counts)))]
    raise ValueError(f'grouping must be one of {GROUPING_POLICIES}; got {policy!r}')


def layout_for_backend(backend: str) -> str:
    """The window layout a resolved attention backend consumes: 'flex' -> 'packed', else
    'padded'."""
    return 'packed' if backend == 'flex' else 'padded'


@functools.lru_cache(maxsize=256)
def _window_keys(hw: Tuple[int, int], window: int, shift: int) -> Tuple[np.ndarray, int]:
    """(H*W,) window of every position of a grid ``hw`` in raster order of the windows
    (read-only, cached: the same for every mask) and the number of windows."""
    off = (window - shift) % window
    rows = (np.arange(hw[0]) + off) // window
    cols = (np.arange(hw[1]) + off) // window
    n_cols = int(cols[-1]) + 1
    keys = (rows[:, None] * n_cols + cols[None, :]).ravel()
    keys.flags.writeable = False
    return keys, (int(rows[-1]) + 1) * n_cols


@functools.lru_cache(maxsize=64)
def _padding_labels(size: int) -> np.ndarray:
    """-1 - arange(size), read-only (cached): a padding slot's window label of its own."""
    out = -1 - np.arange(size)
    out.flags.writeable = False
    return out


def _labels_and_counts(coords: np.ndarray, hw: Tuple[int, int], window: int,
                       shift: int) -> Tuple[np.ndarray, np.ndarray]:
    """(labels (N,), counts) of :func:`window_labels` and the tokens of every non-empty window,
    from the grid's cached window table (``hw`` covers every coordinate)."""
    keys, n_windows = _window_keys(hw, window, shift)
    key = keys[coords[:, 0] * hw[1] + coords[:, 1]]
    counts = np.bincount(key, minlength=n_windows)
    present = counts > 0
    return (np.cumsum(present) - 1)[key], counts[present]


def build_window_plan(coords: np.ndarray, window: int, shift: int, channels: int,
                      grouping: str = 'static', layout: str = 'padded',
                      units: Optional[StageUnits] = None) -> WindowPlan:
    """Plan the attention of N visible tokens (coords (N, 2), raster order) in windows ``w``/``s``.

    ``layout`` 'padded' groups the windows (``grouping``) into equal padded groups; 'packed'
    puts every window at a block boundary of one sequence for FlexAttention (no grouping). With
    ``units`` (needed by ``grouping='static'``) the shapes depend on (ratio, image size) only:
    the padded (G, g) is ``static_budget``'s, the packed length ``packed_block_budget``'s.
    """
    if layout not in LAYOUTS:
        raise ValueError(f'layout must be one of {LAYOUTS}; got {layout!r}')
    n = len(coords)
    if not n:
        raise ValueError('a window plan needs at least one visible token')
    hw = units.hw if units is not None else (int(coords[:, 0].max()) + 1,
                                             int(coords[:, 1].max()) + 1)
    labels, counts = _labels_and_counts(coords, hw, window, shift)
    order = np.argsort(labels, kind='stable')
    labels_sorted = labels[order]
    first = np.cumsum(counts) - counts  # first window-sorted token of every window
    if layout == 'packed':
        return _packed_plan(coords, labels_sorted, order, counts, first, window, shift, units)
    sizes = counts.tolist()
    if grouping == 'static' and units is not None:
        n_groups, g = static_budget(units.units_hw, units.tokens, window, shift, units.visible)
        window_start = static_slot_starts(sizes, (n_groups, g))
    else:
        g, groups = choose_groups(sizes, channels, grouping, units, window, shift)
        n_groups, window_start = len(groups), [0] * len(sizes)
        for gi, group in enumerate(groups):
            pos = gi * g
            for w in group:
                window_start[w] = pos
                pos += sizes[w]
    # slot of every window-sorted token: its window's first slot + its rank in the window
    pos = np.arange(n) + (np.asarray(window_start) - first)[labels_sorted]
    slots = np.full(n_groups * g, n, dtype=np.int64)
    slots[pos] = order
    slot_label = _padding_labels(n_groups * g).copy()  # padding: a negative label of its own
    slot_label[pos] = labels_sorted
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = pos
    slots = slots.reshape(-1, g)
    code = np.append(coords[:, 0] * (2 * window - 1) + coords[:, 1], 0)[slots]
    t = torch.from_numpy
    return WindowPlan(window, shift, layout, slots=t(slots), inverse=t(inverse),
                      slot_window=t(slot_label.reshape(-1, g)), slot_code=t(code))


def _packed_plan(coords, labels_sorted, order, counts, first, window, shift,
                 units: Optional[StageUnits], block: int = FLEX_BLOCK) -> WindowPlan:
    """The packed layout (see ``WindowPlan``): windows at block boundaries, the BlockMask's
    index arrays built here on the host, one sequence of ``packed_block_budget`` blocks (or just
    enough blocks without ``units``). ``labels_sorted``: window of every window-sorted token
    (``order``), ``first``: every window's first window-sorted token."""
    n = len(coords)
    win_blocks = (counts + (block - 1)) // block
    end_block = np.cumsum(win_blocks)
    first_block = end_block - win_blocks
    used = int(end_block[-1])
    nb = used if units is None else packed_block_budget(
        units.units_hw, units.tokens, window, shift, units.visible, block)
    if used > nb:
        raise RuntimeError(f'{used} blocks exceed the packed budget of {nb}')
    pos = (first_block * block - first)[labels_sorted]
    pos += np.arange(n)
    # rows of one array: slot order (padding N), window id (padding -1), row, col (padding 0)
    slot = _slot_padding(nb * block, n).copy()
    slot[0, pos], slot[1, pos] = order, labels_sorted
    slot[2:, pos] = coords[order].T
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = pos
    num, idx = _block_index(win_blocks, first_block, counts % block == 0, nb, used)
    t = torch.from_numpy
    return WindowPlan(window, shift, 'packed', inverse=t(inverse), slot_table=t(slot),
                      block_num=t(num), block_idx=t(idx), block=block)


@functools.lru_cache(maxsize=64)
def _slot_padding(length: int, n: int) -> np.ndarray:
    """(4, length) int64 rows N, -1, 0, 0: an all-padding slot table (read-only, cached)."""
    out = np.zeros((4, length), dtype=np.int64)
    out[0], out[1] = n, -1
    out.flags.writeable = False
    return out


def _block_index(win_blocks: np.ndarray, first_block: np.ndarray, last_full: np.ndarray,
                 nb: int, used: int) -> Tuple[np.ndarray, np.ndarray]:
    """BlockMask arrays of the packed layout: every block of a window attends the window's
    blocks; a (q, kv) block pair is 'partial' (mask_mod applied) when the kv block is the
    window's partly filled last block, else 'full'. Both sides (kv: per q block, q: per kv
    block), so no transpose runs on the device. Blocks past the windows (from ``used``) attend
    nothing. Returns (num (4, 1, 1, nb), idx (4, 1, 1, nb, nb)) int32, rows in the order of
    ``PACKED_BLOCK_NAMES``; unused index entries are 0."""
    window = np.repeat(np.arange(len(win_blocks)), win_blocks)   # window of every used block
    start, size = first_block[window], win_blocks[window]
    n_full = size - ~last_full[window]                            # full blocks of the window
    full_row = size * (np.arange(used) - start < n_full)         # q side: kv block is full
    num = np.zeros((4, 1, 1, nb), dtype=np.int32)
    count = num[:, 0, 0, :used]                                   # blocks of every row
    count[0], count[1], count[2], count[3] = n_full, size - n_full, full_row, size - full_row
    # (4, used): first block of every row; a row's blocks are consecutive
    first = np.empty((4, used), dtype=start.dtype)
    first[:] = start
    first[1] += n_full
    col = np.arange(int(win_blocks.max()))                     # a window's blocks at most
    rows = first[..., None] + col
    rows *= col < count[..., None]
    idx = np.zeros((4, 1, 1, nb, nb), dtype=np.int32)
    idx[:, 0, 0, :used, :len(col)] = rows
    return num, idx


def relative_position_index(q_coords, k_coords, window: int):
    """Bias-table rows for query/key coordinates (..., Nq, 2) x (..., Nk, 2) -> (..., Nq, Nk).

    Works on numpy arrays and torch tensors. Pairs further apart than the window give
    out-of-table values; callers mask or clamp them.
    """
    dr = q_coords[..., :, None, 0] - k_coords[..., None, :, 0]
    dc = q_coords[..., :, None, 1] - k_coords[..., None, :, 1]
    return (dr + window - 1) * (2 * window - 1) + (dc + window - 1)


def build_geometry(mask_tokens: np.ndarray, block_windows: Sequence[Sequence[Tuple[int, int]]],
                   channels: Sequence[int], pad_small_map: bool = False,
                   grouping: str = 'static',
                   downsample: Optional[Sequence[bool]] = None,
                   layout: str = 'padded',
                   tokens_per_unit: Optional[int] = None) -> List[StageGeometry]:
    """Per-stage Swin geometry for a stage-0 token mask (H0, W0) (True = masked).

    block_windows[i]: the configured (window, shift) of every block of stage i; channels[i]: the
    stage's width (for the grouping cost model). The grid halves after every stage with
    ``downsample[i]`` (default: all but the last; ``children[2]`` holds its merge index). One plan
    of ``layout`` is built per distinct effective (window, shift) of a stage and shared by all its
    blocks that use it. ``tokens_per_unit``: stage-0 tokens per mask-unit side (default
    2**merges: the last stage's token is the unit), for the static budgets.
    """
    n_stages = len(block_windows)
    downsample = [i < n_stages - 1 for i in range(n_stages)] if downsample is None else downsample
    t = 2**sum(map(bool, downsample)) if tokens_per_unit is None else int(tokens_per_unit)
    hw = tuple(int(s) for s in mask_tokens.shape)
    coords = visible_coords(mask_tokens)
    stages = []
    for i in range(n_stages):
        units = stage_units(hw, t, len(coords))
        plans, by_effective = {}, {}
        for key in dict.fromkeys(tuple(k) for k in block_windows[i]):
            eff = effective_window(hw, key[0], key[1], pad_small_map)
            if eff not in by_effective:
                by_effective[eff] = build_window_plan(coords, eff[0], eff[1], channels[i],
                                                      grouping, layout, units)
            plans[key] = by_effective[eff]
        geo = StageGeometry(hw, torch.from_numpy(coords), plans)
        if downsample[i]:
            coords, merge = child_index(coords, hw, 2)
            geo.children[2] = torch.from_numpy(merge)
            hw = (hw[0] // 2, hw[1] // 2)
            t = max(1, t // 2)
        stages.append(geo)
    return stages

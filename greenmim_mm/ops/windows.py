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
from dataclasses import dataclass, fields
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .geometry import StageGeometry, child_index, visible_coords
from .grouping import optimal_grouping

GROUPING_POLICIES = ('optimal', 'window', 'single')


LAYOUTS = ('padded', 'packed')


@dataclass
class WindowPlan:
    """Attention layout of one stage and shift parity (N visible tokens, G groups of g slots).

    Only the layout of the attention backend in use is built (``layout``); the other's fields
    are None.

    Padded layout ('padded', SDPA backend):
        slots (G, g) long: token index of each slot; padding slots hold N (an appended zero row).
        inverse (N,) long: flat slot position (in G*g) of every token.
        rel_index (G, g, g) long: bias-table row of each query/key slot pair (0 where not allowed).
        allowed (G, g, g) bool: True where a query slot may attend a key slot (same window; a padding
            slot attends only itself, so no softmax row is empty).
    Packed layout ('packed', FlexAttention backend, no grouping and no padding):
        order (N,) long: tokens sorted by window; window_id (N,) long: dense window id per sorted
        token; coords (N, 2) long: their (row, col).
    """
    window: int
    shift: int
    layout: str
    slots: Optional[torch.Tensor] = None
    inverse: Optional[torch.Tensor] = None
    rel_index: Optional[torch.Tensor] = None
    allowed: Optional[torch.Tensor] = None
    order: Optional[torch.Tensor] = None
    window_id: Optional[torch.Tensor] = None
    coords: Optional[torch.Tensor] = None

    def to(self, device) -> 'WindowPlan':
        """Copy the tensors to ``device`` (non-blocking)."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if isinstance(v, torch.Tensor):
                moved[k] = v.to(device, non_blocking=True)
        return WindowPlan(**moved)

    @property
    def padded_slots(self) -> int:
        """Slots the attention runs on (G*g padded, N packed)."""
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
    key = wr * (int(wc.max()) + 1 if len(wc) else 1) + wc
    _, labels = np.unique(key, return_inverse=True)
    return labels.reshape(-1)


def choose_groups(counts: List[int], channels: int, policy: str) -> Tuple[int, List[List[int]]]:
    """Group size and groups (lists of window indices) for the given policy."""
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


def build_window_plan(coords: np.ndarray, window: int, shift: int, channels: int,
                      grouping: str = 'optimal', layout: str = 'padded') -> WindowPlan:
    """Plan the attention of N visible tokens (coords (N, 2), raster order) in windows ``w``/``s``.

    ``layout`` 'padded' groups the windows (``grouping``) into equal padded groups; 'packed'
    only sorts the tokens by window (no grouping, no padding).
    """
    if layout not in LAYOUTS:
        raise ValueError(f'layout must be one of {LAYOUTS}; got {layout!r}')
    labels = window_labels(coords, window, shift)
    order = np.argsort(labels, kind='stable')
    t = torch.from_numpy
    if layout == 'packed':
        return WindowPlan(window, shift, layout, order=t(order.astype(np.int64)),
                          window_id=t(labels[order].astype(np.int64)),
                          coords=t(coords[order].astype(np.int64)))
    n = len(coords)
    counts = np.bincount(labels)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    g, groups = choose_groups(counts.tolist(), channels, grouping)

    slots = np.full((len(groups), g), n, dtype=np.int64)
    slot_label = np.full((len(groups), g), -1, dtype=np.int64)
    for gi, group in enumerate(groups):
        pos = 0
        for w in group:
            c = counts[w]
            slots[gi, pos:pos + c] = order[starts[w]:starts[w] + c]
            slot_label[gi, pos:pos + c] = w
            pos += c
    flat = slots.reshape(-1)
    inverse = np.empty(n, dtype=np.int64)
    real = flat < n
    inverse[flat[real]] = np.nonzero(real)[0]

    padded_coords = np.concatenate([coords, np.zeros((1, 2), dtype=coords.dtype)])[slots]
    rel_index = relative_position_index(padded_coords, padded_coords, window)
    allowed = (slot_label[:, :, None] == slot_label[:, None, :]) & (slot_label[:, :, None] >= 0)
    pad_diag = (slot_label < 0)[:, :, None] & np.eye(g, dtype=bool)[None]
    allowed |= pad_diag
    rel_index = np.where(allowed, rel_index, 0)
    return WindowPlan(window, shift, layout, slots=t(slots), inverse=t(inverse),
                      rel_index=t(rel_index), allowed=t(allowed))


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
                   grouping: str = 'optimal',
                   downsample: Optional[Sequence[bool]] = None,
                   layout: str = 'padded') -> List[StageGeometry]:
    """Per-stage Swin geometry for a stage-0 token mask (H0, W0) (True = masked).

    block_windows[i]: the configured (window, shift) of every block of stage i; channels[i]: the
    stage's width (for the grouping cost model). The grid halves after every stage with
    ``downsample[i]`` (default: all but the last; ``children[2]`` holds its merge index). One plan
    of ``layout`` is built per distinct effective (window, shift) of a stage and shared by all its
    blocks that use it.
    """
    n_stages = len(block_windows)
    downsample = [i < n_stages - 1 for i in range(n_stages)] if downsample is None else downsample
    hw = tuple(int(s) for s in mask_tokens.shape)
    coords = visible_coords(mask_tokens)
    stages = []
    for i in range(n_stages):
        plans, by_effective = {}, {}
        for key in dict.fromkeys(tuple(k) for k in block_windows[i]):
            eff = effective_window(hw, key[0], key[1], pad_small_map)
            if eff not in by_effective:
                by_effective[eff] = build_window_plan(coords, eff[0], eff[1], channels[i],
                                                      grouping, layout)
            plans[key] = by_effective[eff]
        geo = StageGeometry(hw, torch.from_numpy(coords), plans)
        if downsample[i]:
            coords, merge = child_index(coords, hw, 2)
            geo.children[2] = torch.from_numpy(merge)
            hw = (hw[0] // 2, hw[1] // 2)
        stages.append(geo)
    return stages

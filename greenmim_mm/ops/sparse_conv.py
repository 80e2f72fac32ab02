"""Sparse (submanifold) depthwise convolution on visible tokens (GreenMIM's sparse convolution for Twins' PEG; Huang et al., NeurIPS 2022).

Output only at the visible positions; invisible (masked) neighbours and positions outside the
grid count as zero, i.e. the result equals ``F.conv2d(groups=C, padding=k//2)`` on the
zero-filled map, gathered at the visible positions. Two formulations, both differentiable by
autograd:

* ``'dense'``: scatter the tokens into a zero map, run the dense depthwise convolution, gather.
  Cost O(H·W·C·k²) whatever the mask ratio.
* ``'gather'``: for each of the k² taps, gather the neighbour token (a precomputed (N, k²)
  index, N = a zero row) and accumulate ``weight[:, tap] * neighbour``. Cost O(N·C·k²).

Which one is faster depends on the device and the visible fraction; ``tools/benchmark_sparse_conv.py``
measures both (docs/design.md, GreenTwinsSVT). The default ``'auto'`` picks per stage from the mask: the
gather when at most :data:`GATHER_MAX_VISIBLE` of the grid is visible, else the dense form.
Measured on this project's 2-core CPU (Twins-SVT-L PEGs, batch 8, 224 px, forward + backward,
all stages; dense / gather): ratio 0.75 (24.5 % visible) 1.17x (1 thread) and 1.18x (2 threads),
i.e. the gather is faster; ratio 0.5 0.54x / 0.66x and ratio 0 0.34x / 0.39x, the dense form is
faster (its cost does not depend on the mask; the gather's grows with the visible tokens and its
backward is an index_add per tap). The costs cross at about 28 % visible.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .geometry import gather_tokens, scatter_tokens

SPARSE_CONV_MODES = ('auto', 'dense', 'gather')
DEFAULT_MODE = 'auto'
GATHER_MAX_VISIBLE = 0.28  # 'auto': the gather at most at this visible fraction (measured above)


def check_mode(mode: str) -> str:
    """ValueError unless ``mode`` is one of :data:`SPARSE_CONV_MODES`."""
    if mode not in SPARSE_CONV_MODES:
        raise ValueError(f'sparse_conv must be one of {SPARSE_CONV_MODES}; got {mode!r}')
    return mode


def resolve_mode(mode: str, num_visible: int, grid_hw: Sequence[int]) -> str:
    """The formulation ``mode`` stands for on a grid ``grid_hw`` with ``num_visible`` visible
    positions: 'dense' or 'gather' ('auto': the gather when num_visible <= GATHER_MAX_VISIBLE x
    H x W). ValueError for an unknown mode."""
    check_mode(mode)
    if mode != 'auto':
        return mode
    return 'gather' if num_visible <= GATHER_MAX_VISIBLE * grid_hw[0] * grid_hw[1] else 'dense'


def sparse_depthwise_conv_dense(x: torch.Tensor, coords: torch.Tensor, hw: Sequence[int],
                                weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Scatter -> dense depthwise conv -> gather. x (B, N, C), coords (N, 2), weight (C, 1, k, k)
    -> (B, N, C)."""
    k = weight.shape[-1]
    dense = scatter_tokens(x, coords, hw)
    out = F.conv2d(dense, weight, bias, padding=k // 2, groups=x.shape[-1])
    return gather_tokens(out, coords)


def sparse_depthwise_conv_gather(x: torch.Tensor, neighbours: torch.Tensor,
                                 weight: torch.Tensor,
                                 bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Neighbour gather: x (B, N, C), neighbours (N, k²) (index N = zero), weight (C, 1, k, k)
    -> (B, N, C)."""
    b, n, c = x.shape
    padded = torch.cat([x, x.new_zeros(b, 1, c)], dim=1)
    taps = weight.reshape(c, -1).t()                                       # (k², C)
    out = None
    for t in range(taps.shape[0]):
        # index_select: its backward is index_add, cheaper than advanced indexing's index_put
        term = torch.index_select(padded, 1, neighbours[:, t]) * taps[t]
        out = term if out is None else out + term
    return out if bias is None else out + bias


def sparse_depthwise_conv(x: torch.Tensor, coords: torch.Tensor, hw: Sequence[int],
                          weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                          neighbours: Optional[torch.Tensor] = None,
                          mode: str = DEFAULT_MODE) -> torch.Tensor:
    """Submanifold depthwise k×k convolution (stride 1, 'same' zero padding) on visible tokens.

    Args:
        x: (B, N, C) visible tokens in raster order of ``coords`` (N, 2) on a grid ``hw``.
        weight: (C, 1, k, k) depthwise kernel (odd k); bias: (C,) or None.
        neighbours: (N, k²) from ``geometry.neighbour_index`` (needed by ``mode='gather'``).
        mode: 'gather', 'dense' or 'auto' (module docstring; 'auto' resolved from N and hw).
    Returns (B, N, C). Raises ValueError for a non-depthwise weight or a missing neighbour index.
    """
    mode = resolve_mode(mode, x.shape[1], hw)
    c = x.shape[-1]
    if weight.shape[0] != c or weight.shape[1] != 1 or weight.shape[-1] % 2 == 0:
        raise ValueError(f'expected a depthwise ({c}, 1, k, k) kernel with odd k; '
                         f'got {tuple(weight.shape)}')
    if mode == 'dense':
        return sparse_depthwise_conv_dense(x, coords, hw, weight, bias)
    if neighbours is None or neighbours.shape[1] != weight.shape[-1] * weight.shape[-2]:
        raise ValueError('mode="gather" needs the (N, k*k) neighbour index of the stage')
    return sparse_depthwise_conv_gather(x, neighbours, weight, bias)

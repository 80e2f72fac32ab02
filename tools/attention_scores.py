"""Computed vs needed attention scores per stage of the sparse Swin's window plans.

Needed: the query/key pairs inside one window, sum of count² over the non-empty windows.
Computed: what each layout evaluates (per head and image):

* ``sdpa static`` / ``sdpa optimal``: the padded groups, G·g² (every slot pair of a group);
* ``flex``: the packed layout's BlockMask (windows at block boundaries), (full + partial block
  pairs) · block²;
* ``flex legacy-128``: the previous packed layout (tokens sorted by window, no alignment,
  ``create_block_mask``'s 128-token tiles): every tile pair holding a same-window pair.

Means over random masks, Swin windows (7, shifts 0 and 3) at the given size and ratio; ratio =
computed / needed. The last column is the cost of the static padded plan (``sdpa static``) in
FLOPs of one Swin block at that stage, over the block with only the needed scores:
extra = 4·C·(static - needed) against 24·C²·N + 4·C·needed, with C = ``--embed-dims`` x
2^stage (Swin-B: 128), N the visible tokens, 24·C² the FLOPs per token of qkv, projection and the
4x MLP, and 4·C per score of QK^T and AV summed over heads (a multiply-add is 2 FLOPs).

    tools/env.sh python tools/attention_scores.py [--img-size 224] [--ratio 0.75] [--masks 50]
        [--embed-dims 128]
"""
import argparse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--window', type=int, default=None,
                   help='Swin window (default: 7 at multiples of 224 px, else 6)')
    p.add_argument('--ratio', type=float, default=0.75)
    p.add_argument('--masks', type=int, default=50)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--embed-dims', type=int, default=128,
                   help='stage-0 width C for the FLOP share (Swin-B 128, Swin-L 192)')
    return p.parse_args(argv)


if __name__ == '__main__':
    ARGS = parse_args()  # --help answers before the stack is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402

from greenmim_mm.ops import random_unit_mask, upsample_mask  # noqa: E402
from greenmim_mm.ops.geometry import child_index, visible_coords  # noqa: E402
from greenmim_mm.ops.windows import build_window_plan, stage_units, window_labels  # noqa: E402

LEGACY_TILE = 128


def needed_scores(coords: np.ndarray, window: int, shift: int) -> int:
    """Same-window query/key pairs: sum over windows of count²."""
    counts = np.bincount(window_labels(coords, window, shift))
    return int((counts.astype(np.int64)**2).sum())


def computed_scores(plan) -> int:
    """Scores one head evaluates for one image under ``plan`` (padded or packed)."""
    if plan.layout == 'padded':
        n_groups, g = plan.slots.shape
        return n_groups * g * g
    pairs = int(plan.kv_num_blocks.sum()) + int(plan.full_kv_num_blocks.sum())
    return pairs * plan.block * plan.block


def legacy_flex_scores(coords: np.ndarray, window: int, shift: int,
                       tile: int = LEGACY_TILE) -> int:
    """The previous flex layout: tokens sorted by window, ``tile``-token blocks (the kernel
    computes whole tiles); a block pair is computed when it holds any same-window pair."""
    labels = np.sort(window_labels(coords, window, shift))
    n = len(labels)
    starts = np.arange(0, n, tile)
    lo, hi = labels[starts], labels[np.minimum(starts + tile, n) - 1]
    overlap = (lo[:, None] <= hi[None, :]) & (lo[None, :] <= hi[:, None])
    return int(overlap.sum()) * tile * tile


def padding_share(needed: float, static: float, tokens: float, dims: int) -> float:
    """Extra FLOPs of a Swin block (width ``dims``, ``tokens`` visible tokens) computing
    ``static`` instead of ``needed`` attention scores per head, as a fraction of the block
    with the needed scores only (see the module docstring)."""
    block = 24 * dims * dims * tokens + 4 * dims * needed
    return 4 * dims * (static - needed) / block


def stage_rows(img_size: int, ratio: float, masks: int, seed: int, window: int):
    """Per (stage, shift): mean needed and computed scores of every layout, and the mean
    number of visible tokens (the last entry)."""
    units = img_size // 32
    gen = torch.Generator().manual_seed(seed)
    sums = {}
    for _ in range(masks):
        mask = random_unit_mask((units, units), ratio, gen)
        coords = visible_coords(upsample_mask(mask, 8).numpy())
        hw, t = (img_size // 4, img_size // 4), 8
        for stage in range(4):
            w = min(window, hw[0])
            for shift in ((0, w // 2) if w < hw[0] else (0, )):
                su = stage_units(hw, t, len(coords))
                row = sums.setdefault((stage, hw[0], shift), np.zeros(6))
                row += [needed_scores(coords, w, shift),
                        computed_scores(build_window_plan(coords, w, shift, 1, 'static',
                                                          'padded', su)),
                        computed_scores(build_window_plan(coords, w, shift, 128, 'optimal',
                                                          'padded', su)),
                        computed_scores(build_window_plan(coords, w, shift, 1, 'static',
                                                          'packed', su)),
                        legacy_flex_scores(coords, w, shift), len(coords)]
            if stage < 3:
                coords = child_index(coords, hw, 2)[0]
                hw, t = (hw[0] // 2, hw[1] // 2), t // 2
    return {k: v / masks for k, v in sums.items()}


def main(args: argparse.Namespace) -> None:
    window = args.window or (7 if args.img_size % 224 == 0 else 6)
    print(f'Swin window {window}, {args.img_size} px, ratio {args.ratio}, {args.masks} masks: '
          'mean scores per head and image (computed / needed)')
    print(f'{"stage":>5s} {"grid":>4s} {"shift":>5s} {"needed":>8s} | {"sdpa static":>16s} '
          f'{"sdpa optimal":>16s} {"flex":>16s} {"flex legacy-128":>18s} | '
          f'static padding, % of block FLOPs (C={args.embed_dims}·2^stage)')
    for (stage, grid, shift), v in sorted(stage_rows(args.img_size, args.ratio, args.masks,
                                                     args.seed, window).items()):
        cells = ' '.join(f'{c:9.0f} {c / v[0]:5.2f}x' for c in v[1:5])
        share = padding_share(v[0], v[1], v[5], args.embed_dims * 2**stage)
        print(f'{stage:5d} {grid:4d} {shift:5d} {v[0]:8.0f} | {cells} | {100 * share:6.2f}')


if __name__ == '__main__':
    main(ARGS)

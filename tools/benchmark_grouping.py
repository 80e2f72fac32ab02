"""Benchmark GreenMIM window grouping on Swin-B at 224 px (ratio 0.75).

For every stage of Swin-B (C = 128/256/512/1024; window 7 and window 14,
shift 0 and w//2) and random 7x7 unit masks, prints:

* plan time of ``optimal_grouping`` (median / p90, ms) and the share of
  plans proven optimal within the exact-search budget;
* median time of ``algorithm1_grouping`` (the paper's Algorithm 1) on the
  first ``--alg1-masks`` masks;
* cost ratios alg1/opt (on those masks) and fixed-g/opt (all masks), where
  fixed-g is the official code: g = min(w², max count), one repeated
  knapsack pass;
* padding overhead n_groups*g / visible tokens of the optimal and fixed-g
  plans;
* the whole per-step plan (``build_geometry``: visible tokens, merge indices
  and every window plan of Swin-B, window 7) per grouping policy and layout
  (padded: SDPA, packed: FlexAttention), median / p90 ms of this thread's CPU
  time (so that other processes on a busy machine do not count), and the
  number of distinct plan shapes over the masks ('static' must give one);
* the whole step plan of GreenMIM Swin-B (``GreenMIM.build_plan``, what the prefetch thread
  runs per step: mask, geometry, decoder cells, packing into one buffer) per attention backend
  (sdpa: padded layout, flex: packed layout), median thread CPU ms and wall ms; and the main
  thread's cost of ``GreenMIM.plan_step`` when the plan was prefetched (take it, one copy of
  the buffer, the views, start the next build), median thread CPU ms and wall ms. Built and
  moved for the CPU here (on CUDA the buffer is pinned and the copy is non-blocking).

Usage: python tools/benchmark_grouping.py [--masks 200] [--seed 0]
       python tools/benchmark_grouping.py --plan-only [--img-size 192]
"""
import argparse
import os.path as osp
import time

import numpy as np
from _light import load

grouping = load('ops/grouping')  # numpy only: not the package, whose import loads the stack

UNITS = 7  # 224 px / 32 px mask units
EMBED_DIMS = (128, 256, 512, 1024)
STAGE_GRIDS = (56, 28, 14, 7)


def random_masks(n, ratio, seed):
    """MAE-style masks over the 7x7 units (True = masked), seeded."""
    rng = np.random.default_rng(seed)
    keep = int(UNITS * UNITS * (1 - ratio))
    masks = []
    for _ in range(n):
        mask = np.ones(UNITS * UNITS, dtype=bool)
        mask[rng.permutation(UNITS * UNITS)[:keep]] = False
        masks.append(mask.reshape(UNITS, UNITS))
    return masks


def stage_configs(window):
    """(stage, grid, tokens_per_unit, C, w, shift) with Swin's clamping."""
    for stage, (grid, dims) in enumerate(zip(STAGE_GRIDS, EMBED_DIMS), 1):
        w = min(window, grid)
        shifts = (0, w // 2) if w < grid else (0, )
        for shift in shifts:
            yield stage, grid, grid // UNITS, dims, w, shift


def fixed_g_plan(counts, w):
    """The official code: g = min(w², max count), one greedy pass."""
    g = min(w * w, max(counts))
    return g, grouping.repeated_knapsack(counts, g)


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - start) * 1e3


def bench_config(masks, n_alg1, cfg):
    _, _, t, dims, w, shift = cfg
    plan_ms, alg1_ms, alg1_ratio, fixed_ratio = [], [], [], []
    pad_opt, pad_fixed, windows, proven = [], [], [], 0
    for i, mask in enumerate(masks):
        counts = grouping.window_counts(mask, t, w, shift)
        (g, groups), ms = timed(grouping.optimal_grouping, counts, dims)
        plan_ms.append(ms)
        cost = grouping.grouping_cost(g, groups, dims)
        proven += grouping._optimal_plan(counts, dims,
                                         grouping.EXACT_SEARCH_BUDGET)[2]
        g_f, groups_f = fixed_g_plan(counts, w)
        fixed_ratio.append(grouping.grouping_cost(g_f, groups_f, dims) / cost)
        total = sum(counts)
        pad_opt.append(len(groups) * g / total)
        pad_fixed.append(len(groups_f) * g_f / total)
        windows.append(len(counts))
        if i < n_alg1:
            (g1, groups1), ms = timed(grouping.algorithm1_grouping, counts,
                                      dims)
            alg1_ms.append(ms)
            alg1_ratio.append(
                grouping.grouping_cost(g1, groups1, dims) / cost)
    return dict(
        windows=np.mean(windows), plan_med=np.median(plan_ms),
        plan_p90=np.percentile(plan_ms, 90), plan_max=np.max(plan_ms),
        proven=100 * proven / len(masks), alg1_med=np.median(alg1_ms),
        alg1_mean=np.mean(alg1_ratio), alg1_max=np.max(alg1_ratio),
        fixed_mean=np.mean(fixed_ratio), fixed_max=np.max(fixed_ratio),
        pad_opt=np.mean(pad_opt), pad_fixed=np.mean(pad_fixed))


def bench_plans(n_masks, ratio, seed, img_size):
    """Per (grouping, layout): median / p90 ms of ``build_geometry`` for Swin-B (window 7, or
    6 below 224 px) and the distinct plan shapes over the masks."""
    import torch
    from greenmim_mm.ops.masking import random_unit_mask, upsample_mask
    from greenmim_mm.ops.windows import build_geometry
    window = 7 if img_size % 224 == 0 else 6
    units = img_size // 32
    gen = torch.Generator().manual_seed(seed)
    masks = [upsample_mask(random_unit_mask((units, units), ratio, gen), 8).numpy()
             for _ in range(n_masks)]
    rows = []
    for policy, layout in (('optimal', 'padded'), ('static', 'padded'), ('static', 'packed')):
        times, shapes = [], set()
        for mask in masks:
            start = time.thread_time()
            geometry = build_geometry(mask, [[(window, 0), (window, window // 2)]] * 4,
                                      EMBED_DIMS, False, policy, None, layout, 8)
            times.append((time.thread_time() - start) * 1e3)
            shapes.add(tuple((i, key, tuple(v.shape for v in vars(plan).values()
                                            if isinstance(v, torch.Tensor)))
                             for i, geo in enumerate(geometry)
                             for key, plan in geo.plans.items()))
        rows.append((policy, layout, np.median(times), np.percentile(times, 90), len(shapes)))
    return rows


def print_plans(args):
    print(f'Per-step plan (build_geometry), Swin-B {args.img_size} px, ratio {args.ratio}, '
          f'{args.masks} masks: thread CPU ms')
    print(f'{"grouping":>8s} {"layout":>7s} {"median":>7s} {"p90":>6s} {"shapes":>6s}')
    for policy, layout, med, p90, shapes in bench_plans(args.masks, args.ratio, args.seed,
                                                        args.img_size):
        print(f'{policy:>8s} {layout:>7s} {med:7.2f} {p90:6.2f} {shapes:6d}')


def swin_b_greenmim(img_size, ratio, backend):
    """GreenMIM Swin-B (window 7, or 6 below 224 px) of the w7 pre-training config, no init."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import greenmim_mm  # noqa: F401  (registers the models)
    from greenmim_mm.registry import MODELS
    init_default_scope('greenmim_mm')
    cfg = Config.fromfile(osp.join(osp.dirname(osp.abspath(__file__)), '..', 'configs',
                                   'pretrain', 'greenmim_swin-base-w7_8xb256-amp-800e_in1k-'
                                   '224px.py'))
    cfg.model.update(mask_ratio=ratio, mask_seed=0, init_cfg=None)
    cfg.model.backbone.update(img_size=img_size, attn_backend=backend,
                              window_size=7 if img_size % 224 == 0 else 6)
    return MODELS.build(cfg.model).train()


def _wait_prefetch(model):
    pending = model._prefetcher._pending
    if pending is not None:
        pending[1].result()


def bench_whole_plan(n_masks, ratio, img_size, backend):
    """(build_plan CPU ms, wall ms, plan_step CPU ms, wall ms): medians over ``n_masks`` steps.
    ``build_plan`` runs in this thread; ``plan_step`` is timed with the step's plan prefetched
    (the previous step's build waited for, outside the timing)."""
    import torch
    model = swin_b_greenmim(img_size, ratio, backend)
    device, shape = torch.device('cpu'), (img_size, img_size)
    for step in range(3):  # warm-up: budgets and caches
        model.build_plan((step, shape, device, True, 0, 0))
    build_cpu, build_wall = [], []
    for step in range(n_masks):
        cpu, wall = time.thread_time(), time.perf_counter()
        model.build_plan((step, shape, device, True, 0, 0))
        build_cpu.append(time.thread_time() - cpu)
        build_wall.append(time.perf_counter() - wall)
    img = torch.zeros(1, 3, img_size, img_size)
    model.plan_step(img)
    step_cpu, step_wall = [], []
    for _ in range(n_masks):
        _wait_prefetch(model)
        cpu, wall = time.thread_time(), time.perf_counter()
        model.plan_step(img)
        step_cpu.append(time.thread_time() - cpu)
        step_wall.append(time.perf_counter() - wall)
    _wait_prefetch(model)
    return tuple(1e3 * np.median(v) for v in (build_cpu, build_wall, step_cpu, step_wall))


def print_whole_plan(args):
    print(f'Whole step plan (GreenMIM.build_plan) and main-thread plan_step (prefetched), '
          f'Swin-B {args.img_size} px, ratio {args.ratio}, {args.masks} steps: median ms')
    print(f'{"backend":>7s} {"layout":>7s} | {"build cpu":>9s} {"wall":>6s} | '
          f'{"plan_step cpu":>13s} {"wall":>6s}')
    for backend, layout in (('sdpa', 'padded'), ('flex', 'packed')):
        b_cpu, b_wall, s_cpu, s_wall = bench_whole_plan(args.masks, args.ratio, args.img_size,
                                                        backend)
        print(f'{backend:>7s} {layout:>7s} | {b_cpu:9.2f} {b_wall:6.2f} | {s_cpu:13.3f} '
              f'{s_wall:6.3f}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--masks', type=int, default=200,
                        help='random masks per configuration')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--ratio', type=float, default=0.75)
    parser.add_argument('--alg1-masks', type=int, default=20,
                        help='masks on which Algorithm 1 is run')
    parser.add_argument('--img-size', type=int, default=224,
                        help='image size of the per-step plan section')
    parser.add_argument('--plan-only', action='store_true',
                        help='only the per-step plan sections (geometry per policy and '
                        'layout; the whole build_plan and plan_step of GreenMIM Swin-B)')
    args = parser.parse_args()
    print_plans(args)
    print_whole_plan(args)
    if args.plan_only:
        return
    masks = random_masks(args.masks, args.ratio, args.seed)
    n_alg1 = min(args.alg1_masks, args.masks)
    print(f'Swin-B @224, {args.masks} masks (seed {args.seed}), ratio '
          f'{args.ratio}; Algorithm 1 on {n_alg1} masks; budget '
          f'{grouping.EXACT_SEARCH_BUDGET} exact-search nodes')
    header = ('win stage grid    C  w sh  #win | plan ms med   p90   max '
              'proven | alg1 ms | alg1/opt mean   max | fixed/opt mean   '
              'max | pad opt fixed')
    print(header)
    print('-' * len(header))
    for window in (7, 14):
        for cfg in stage_configs(window):
            r = bench_config(masks, n_alg1, cfg)
            stage, grid, _, dims, w, shift = cfg
            print(f'{window:3d} {stage:5d} {grid:4d} {dims:4d} {w:2d} '
                  f'{shift:2d} {r["windows"]:5.1f} | {r["plan_med"]:11.3f} '
                  f'{r["plan_p90"]:5.3f} {r["plan_max"]:5.2f} '
                  f'{r["proven"]:5.0f}% | {r["alg1_med"]:7.1f} | '
                  f'{r["alg1_mean"]:13.4f} {r["alg1_max"]:5.3f} | '
                  f'{r["fixed_mean"]:14.4f} {r["fixed_max"]:5.3f} | '
                  f'{r["pad_opt"]:7.3f} {r["pad_fixed"]:5.3f}')


if __name__ == '__main__':
    main()

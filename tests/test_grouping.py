"""Tests for greenmim_mm.ops.grouping (optimal window grouping)."""

import numpy as np
import pytest

from greenmim_mm.ops import grouping as grouping_module
from greenmim_mm.ops.grouping import (algorithm1_grouping, grouping_cost,
                                      optimal_grouping, window_counts)


# --------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------
def f(g, c):
    return 4 * g * c * c + 2 * g * g * c


def set_partitions(items):
    """Every set partition of ``items`` (lists of lists)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in set_partitions(rest):
        yield [[first]] + part
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1:]


def brute_force_optimum(counts, channels):
    """(cost, g) minimising k*f(g) over every g and every set partition.

    For each partition we keep (groups, largest group total); for each g in
    [max, sum] the fewest groups among the partitions feasible under g.
    Ties -> smaller g.
    """
    gs = np.arange(max(counts), sum(counts) + 1)
    fewest = np.full(len(gs), np.iinfo(np.int64).max)
    for part in set_partitions(list(range(len(counts)))):
        largest = max(sum(counts[i] for i in grp) for grp in part)
        feasible = gs >= largest
        fewest[feasible] = np.minimum(fewest[feasible], len(part))
    costs = [int(k) * f(int(g), channels) for k, g in zip(fewest, gs)]
    best = min(range(len(gs)), key=lambda i: (costs[i], gs[i]))
    return costs[best], int(gs[best]), fewest, gs


def textbook_knapsack(weights, capacity):
    """0/1 knapsack (value = weight), full 2-D table, back-tracking."""
    n = len(weights)
    table = [[0] * (capacity + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        w = weights[i - 1]
        for c in range(capacity + 1):
            table[i][c] = table[i - 1][c]
            if w <= c:
                table[i][c] = max(table[i][c], w + table[i - 1][c - w])
    taken, c = [], capacity
    for i in range(n, 0, -1):
        if table[i][c] != table[i - 1][c]:
            taken.append(i - 1)
            c -= weights[i - 1]
    return sorted(taken)


def textbook_algorithm1(counts, channels):
    """Algorithm 1 written out with the 2-D knapsack table."""
    best = None
    for g in range(max(counts), sum(counts) + 1):
        remaining, groups = list(range(len(counts))), []
        while remaining:
            taken = textbook_knapsack([counts[i] for i in remaining], g)
            groups.append([remaining[p] for p in taken])
            remaining = [w for p, w in enumerate(remaining) if p not in taken]
        cost = len(groups) * f(g, channels)
        if best is None or cost < best[0]:
            best = (cost, g, groups)
    return best[1], best[2]


def assert_valid(counts, g, groups):
    flat = sorted(i for grp in groups for i in grp)
    assert flat == list(range(len(counts))), 'not a partition'
    assert all(grp for grp in groups), 'empty group'
    assert g >= max(counts)
    assert all(sum(counts[i] for i in grp) <= g for grp in groups)


def dense_window_counts(mask_units, t, window, shift):
    """Window counts from the full visibility grid and explicit boxes."""
    vis = ~np.kron(mask_units, np.ones((t, t), dtype=bool))
    h, w = vis.shape

    def cuts(size):  # window boundaries at 0, shift, shift + window, ...
        return [0] + list(range(shift or window, size, window)) + [size]

    out = []
    rows, cols = cuts(h), cuts(w)
    for r0, r1 in zip(rows[:-1], rows[1:]):
        for c0, c1 in zip(cols[:-1], cols[1:]):
            n = int(vis[r0:r1, c0:c1].sum())
            if n:
                out.append(n)
    return out


def random_mask(rng, ratio, side=7):
    keep = int(side * side * (1 - ratio))
    mask = np.ones(side * side, dtype=bool)
    mask[rng.permutation(side * side)[:keep]] = False
    return mask.reshape(side, side)


# --------------------------------------------------------------------------
# Cost model
# --------------------------------------------------------------------------
def test_grouping_cost_formula():
    assert grouping_cost(49, [[0], [1, 2], [3]], 128) == 3 * (
        4 * 49 * 128**2 + 2 * 49**2 * 128)
    assert grouping_cost(1, [[0]], 1) == 6


# --------------------------------------------------------------------------
# Brute force on small inputs
# --------------------------------------------------------------------------
def small_case(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 13, size=int(rng.integers(1, 8)))
    return [int(c) for c in counts], (4, 32, 128)[seed % 3]


SMALL_CASES = [small_case(seed) for seed in range(150)]
SMALL_CASES += [([5], 32), ([7, 7, 7, 7], 4), ([12] * 6, 128),
                ([5, 1], 32), ([1, 1, 1, 1, 1, 1, 1], 4),
                ([12, 11, 1, 2, 3, 4, 5], 128), ([6, 6, 4, 4, 4, 3, 3], 32)]


@pytest.mark.parametrize('counts,channels', SMALL_CASES)
def test_optimal_matches_brute_force(counts, channels):
    cost, g_best, _, _ = brute_force_optimum(counts, channels)
    g, groups = optimal_grouping(counts, channels)
    assert_valid(counts, g, groups)
    # Exact: the true optimum, and the smallest such g.
    assert grouping_cost(g, groups, channels) == cost
    assert g == g_best
    g1, groups1 = algorithm1_grouping(counts, channels)
    assert_valid(counts, g1, groups1)
    assert grouping_cost(g1, groups1, channels) >= cost


def test_l2_bound_is_a_lower_bound():
    rng = np.random.default_rng(7)
    for _ in range(60):
        counts = [int(c) for c in rng.integers(1, 13, int(rng.integers(1, 8)))]
        _, _, fewest, gs = brute_force_optimum(counts, 32)
        asc = sorted(counts)
        prefix = np.concatenate([[0], np.cumsum(asc)]).tolist()
        for k, g in zip(fewest, gs):
            assert grouping_module._l2_bound(asc, prefix, int(g)) <= k


def test_exact_bin_completion_matches_brute_force():
    rng = np.random.default_rng(13)
    for _ in range(40):
        counts = [int(c) for c in rng.integers(1, 13, int(rng.integers(2, 9)))]
        _, _, fewest, gs = brute_force_optimum(counts, 32)
        sizes = sorted(counts, reverse=True)
        for k, g in zip(fewest, gs):
            solver = grouping_module._BinCompletion(sizes, int(g), [10**6])
            bins = solver.solve(int(k))
            assert bins is not None
            flat = sorted(p for b in bins for p in b)
            assert flat == list(range(len(sizes)))
            assert all(sum(sizes[p] for p in b) <= g for b in bins)
            assert len(bins) <= k
            if k > 1:
                assert solver.solve(int(k) - 1) is None


def test_small_cases_are_proven_optimal():
    for counts, channels in SMALL_CASES:
        _, _, proven = grouping_module._optimal_plan(
            counts, channels, grouping_module.EXACT_SEARCH_BUDGET)
        assert proven


def test_edge_cases():
    assert optimal_grouping([5], 32) == (5, [[0]])
    assert algorithm1_grouping([5], 32) == (5, [[0]])
    # Equal counts: one window per group, no padding.
    assert optimal_grouping([49] * 10, 128) == (49, [[i] for i in range(10)])
    # Masking mode: one group of everything beats two padded groups.
    assert optimal_grouping([5, 1], 32) == (6, [[0, 1]])
    # Two groups of 4 (cost 2560) beat one group of 7 (2576) at C = 8.
    assert optimal_grouping([3, 4], 8) == (4, [[0], [1]])
    # numpy integers are accepted.
    assert optimal_grouping(np.array([3, 4]), np.int64(8)) == (4, [[0], [1]])


def test_deterministic():
    rng = np.random.default_rng(3)
    counts = window_counts(random_mask(rng, 0.75), 8, 7, 3)
    assert optimal_grouping(counts, 128) == optimal_grouping(counts, 128)


# --------------------------------------------------------------------------
# Algorithm 1 fidelity
# --------------------------------------------------------------------------
def test_algorithm1_matches_textbook_dp():
    rng = np.random.default_rng(11)
    cases = [[int(c) for c in rng.integers(1, 15, int(rng.integers(1, 9)))]
             for _ in range(40)]
    cases.append(window_counts(random_mask(rng, 0.9), 4, 7, 3))
    for counts in cases:
        for channels in (4, 128):
            assert algorithm1_grouping(counts, channels) == \
                textbook_algorithm1(counts, channels)


def test_knapsack_subset_matches_textbook_dp():
    rng = np.random.default_rng(5)
    for _ in range(200):
        size = int(rng.integers(1, 12))
        weights = [int(w) for w in rng.integers(1, 20, size)]
        capacity = int(rng.integers(max(weights), sum(weights) + 2))
        assert grouping_module.knapsack_subset(weights, capacity) == \
            textbook_knapsack(weights, capacity)


# --------------------------------------------------------------------------
# Realistic masks: never worse than Algorithm 1
# --------------------------------------------------------------------------
# (tokens_per_unit, channels, window, shift): Swin-B stages 1 and 2 at 224.
STAGES = [(8, 128, 7, 0), (8, 128, 7, 3), (4, 256, 7, 0), (4, 256, 7, 3),
          (8, 128, 14, 0), (8, 128, 14, 7), (4, 256, 14, 0), (4, 256, 14, 7)]


@pytest.mark.parametrize('ratio', [0.5, 0.75, 0.9])
@pytest.mark.parametrize('stage', STAGES)
def test_not_worse_than_algorithm1_on_masks(stage, ratio):
    t, channels, window, shift = stage
    seed = STAGES.index(stage) * 10 + int(ratio * 100)
    counts = window_counts(random_mask(np.random.default_rng(seed), ratio), t,
                           window, shift)
    g, groups = optimal_grouping(counts, channels)
    assert_valid(counts, g, groups)
    g1, groups1 = algorithm1_grouping(counts, channels)
    assert_valid(counts, g1, groups1)
    lower = sum(counts) * f(max(counts), channels) // max(counts)
    assert lower <= grouping_cost(g, groups, channels) <= grouping_cost(
        g1, groups1, channels)


@pytest.mark.parametrize('window,shift', [(7, 0), (7, 3), (14, 0), (14, 7)])
def test_not_worse_than_algorithm1_without_exact_search(
        monkeypatch, window, shift):
    """The guarantee must not rest on the (budgeted) exact search."""
    monkeypatch.setattr(grouping_module, 'EXACT_SEARCH_BUDGET', 0)
    rng = np.random.default_rng(window + shift)
    for ratio in (0.5, 0.75) * 20:
        counts = window_counts(random_mask(rng, ratio), 4, window, shift)
        g, groups = optimal_grouping(counts, 256)
        assert_valid(counts, g, groups)
        g1, groups1 = algorithm1_grouping(counts, 256)
        assert grouping_cost(g, groups, 256) <= grouping_cost(
            g1, groups1, 256)


def test_beats_algorithm1_somewhere():
    """Algorithm 1's greedy packing is not optimal; the search finds better."""
    rng = np.random.default_rng(0)
    strictly_better = 0
    for _ in range(3):
        counts = window_counts(random_mask(rng, 0.75), 8, 14, 7)
        g, groups = optimal_grouping(counts, 128)
        g1, groups1 = algorithm1_grouping(counts, 128)
        strictly_better += (grouping_cost(g, groups, 128) <
                            grouping_cost(g1, groups1, 128))
    assert strictly_better >= 1


# --------------------------------------------------------------------------
# window_counts
# --------------------------------------------------------------------------
@pytest.mark.parametrize('t,window,shift', [(8, 7, 0), (8, 7, 3), (4, 7, 3),
                                            (8, 14, 7), (4, 14, 0), (2, 7, 3),
                                            (1, 7, 0), (3, 5, 2), (2, 4, 1)])
def test_window_counts_matches_dense(t, window, shift):
    rng = np.random.default_rng(t * 100 + window * 10 + shift)
    for shape in [(7, 7), (6, 6), (5, 7), (3, 4)]:
        for ratio in (0.0, 0.5, 0.75, 0.9):
            mask = rng.random(shape) < ratio
            assert window_counts(mask, t, window, shift) == \
                dense_window_counts(mask, t, window, shift)


def test_window_counts_stage1_totals():
    rng = np.random.default_rng(1)
    mask = random_mask(rng, 0.75)
    for window, shift in [(7, 0), (7, 3), (14, 0), (14, 7)]:
        counts = window_counts(mask, 8, window, shift)
        assert sum(counts) == 12 * 64  # 12 visible units of 8x8 tokens
        assert max(counts) <= window * window and min(counts) >= 1
    # Unshifted windows of 7 on 56 tokens: at most 8x8 windows.
    assert len(window_counts(mask, 8, 7, 0)) <= 64
    assert window_counts(np.zeros((7, 7), bool), 8, 7, 0) == [49] * 64


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------
@pytest.mark.parametrize('fn', [optimal_grouping, algorithm1_grouping])
@pytest.mark.parametrize('counts,channels,match', [
    ([], 32, 'empty'),
    ([3, 0, 2], 32, r'counts\[1\] must be >= 1'),
    ([3, -1], 32, r'counts\[1\] must be >= 1'),
    ([3, 2.5], 32, 'integer'),
    ([3, 2], 0, 'channels must be >= 1'),
    ([3, 2], 1.0, 'channels must be an integer'),
    (np.ones((2, 2), int), 32, '1-D'),
])
def test_invalid_inputs(fn, counts, channels, match):
    with pytest.raises(ValueError, match=match):
        fn(counts, channels)


def test_window_counts_invalid():
    mask = np.zeros((7, 7), bool)
    with pytest.raises(ValueError, match='shift'):
        window_counts(mask, 8, 7, 7)
    with pytest.raises(ValueError, match='bool'):
        window_counts(mask.astype(int), 8, 7, 0)
    with pytest.raises(ValueError, match='tokens_per_unit'):
        window_counts(mask, 0, 7, 0)
    with pytest.raises(ValueError, match='window'):
        window_counts(mask, 8, 0, 0)

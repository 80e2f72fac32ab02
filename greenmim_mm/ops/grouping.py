"""Optimal grouping of Swin windows for Group Window Attention (GreenMIM, Huang et al.,
NeurIPS 2022: group window attention, optimal grouping by dynamic programming).

The windows of a Swin stage hold unequal numbers of visible tokens (their
*counts*). Group Window Attention packs the windows into ``n_groups`` groups
of one common size ``g`` (every group's total count <= g; padding fills the
rest) and runs attention on the ``(n_groups, g)`` padded layout.

Cost model (Swin's MSA cost of one group of g slots with C channels: the
QKV and output projections 4·g·C², QKᵀ and A·V 2·g²·C)::

    cost(g, groups) = len(groups) * (4*g*C**2 + 2*g**2*C)

* :func:`algorithm1_grouping` is the paper's Algorithm 1: for every g in
  ``[max(counts), sum(counts)]`` pack by repeated 0/1 knapsack and keep the
  cheapest g.
* :func:`optimal_grouping` minimises the same cost with a best-first search
  over g, bin-packing lower bounds and exact bin completion. Its cost never
  exceeds Algorithm 1's (see its docstring); a Swin-B stage-1 plan at
  224 px takes ~0.1 ms (median) to ~1 ms (p90) on one CPU core.
* :func:`window_counts` gives the visible count of every non-empty window of
  a stage from a mask over 32 px units.
* :func:`static_budget` / :func:`static_grouping`: one (G, g) per stage plan for
  every mask with a given number of visible units (static shapes for
  ``torch.compile`` and CUDA graphs); see :func:`static_budget`.

Everything here is pure Python + numpy and runs on the CPU.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import numbers
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    'algorithm1_grouping', 'group_cost', 'grouping_cost', 'knapsack_subset',
    'first_fit_bound', 'optimal_grouping', 'packed_block_budget',
    'repeated_knapsack', 'static_budget',
    'static_grouping', 'static_slot_starts', 'window_counts'
]

Groups = List[List[int]]

# Nodes the exact bin-completion search may visit in one optimal_grouping
# call. Small inputs are always solved exactly far below this; on large
# inputs it caps the plan time (the plan then is the best heuristic packing,
# which is still never worse than Algorithm 1).
EXACT_SEARCH_BUDGET = 500


# --------------------------------------------------------------------------
# Cost model and validation
# --------------------------------------------------------------------------
def group_cost(g: int, channels: int) -> int:
    """MSA cost of one group of ``g`` slots: ``4*g*C**2 + 2*g**2*C``."""
    return 4 * g * channels * channels + 2 * g * g * channels


def grouping_cost(g: int, groups: Sequence[Sequence[int]],
                  channels: int) -> int:
    """Total cost ``len(groups) * (4*g*C**2 + 2*g**2*C)`` of a grouping."""
    return len(groups) * group_cost(g, channels)


def _check_int(value, name: str, minimum: int) -> int:
    """Return ``value`` as int; ValueError unless integral and >= minimum."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, numbers.Integral):
        raise ValueError(f'{name} must be an integer, got {value!r}')
    if value < minimum:
        raise ValueError(f'{name} must be >= {minimum}, got {value!r}')
    return int(value)


def _check_inputs(counts: Sequence[int],
                  channels: int) -> Tuple[List[int], int]:
    """Validate ``counts`` (non-empty, every count >= 1) and ``channels``."""
    if isinstance(counts, np.ndarray) and counts.ndim != 1:
        raise ValueError(f'counts must be 1-D, got shape {counts.shape}')
    counts = list(counts)
    if not counts:
        raise ValueError('counts must not be empty (no non-empty window)')
    checked = [_check_int(c, f'counts[{i}]', 1) for i, c in enumerate(counts)]
    return checked, _check_int(channels, 'channels', 1)


# --------------------------------------------------------------------------
# Repeated 0/1 knapsack (the packing of Algorithm 1)
# --------------------------------------------------------------------------
def knapsack_subset(weights: Sequence[int], capacity: int) -> List[int]:
    """Positions of the subset of ``weights`` with the largest sum <= capacity.

    0/1 knapsack with value = weight. This is the textbook table
    ``K[i][c] = max(K[i-1][c], w_i + K[i-1][c-w_i])`` with its usual
    back-tracking from ``(n, capacity)`` (item i is taken iff
    ``K[i][c] != K[i-1][c]``), so ties between subsets of equal sum are
    broken exactly like the DP. Row ``i`` of the table is kept as a Python
    int bitset of the sums reachable with the first ``i`` weights, so that
    ``K[i][c]`` is the highest set bit <= c.
    """
    if sum(weights) <= capacity:
        return list(range(len(weights)))  # K takes every item
    full = (2 << capacity) - 1
    rows = [1]
    for w in weights:
        rows.append((rows[-1] | (rows[-1] << w)) & full)
    taken = []
    c = capacity
    best = rows[-1].bit_length() - 1  # K[n][capacity]
    for i in range(len(weights), 0, -1):
        if best == 0:
            break
        without = (rows[i - 1] & ((2 << c) - 1)).bit_length() - 1
        if without != best:  # K[i][c] != K[i-1][c]: item i is taken
            taken.append(i - 1)
            c -= weights[i - 1]
            best -= weights[i - 1]
    taken.reverse()
    return taken


def repeated_knapsack(counts: Sequence[int], g: int) -> Groups:
    """Algorithm 1's packing: repeatedly take the fullest subset (<= g).

    The knapsack runs over the remaining windows in index order; every
    emitted group is a list of window indices in increasing order.
    """
    remaining = list(range(len(counts)))
    groups = []
    while remaining:
        taken = knapsack_subset([counts[i] for i in remaining], g)
        if not taken:
            raise ValueError(f'g={g} is smaller than a window count')
        groups.append([remaining[p] for p in taken])
        chosen = set(taken)
        remaining = [w for p, w in enumerate(remaining) if p not in chosen]
    return groups


def algorithm1_grouping(counts: Sequence[int],
                        channels: int) -> Tuple[int, Groups]:
    """The paper's Algorithm 1, the reference for :func:`optimal_grouping`.

    For every g from ``max(counts)`` to ``sum(counts)``, pack the windows by
    repeated 0/1 knapsack (:func:`repeated_knapsack`) and evaluate
    ``cost = n_groups * (4*g*C**2 + 2*g**2*C)``; return the cheapest
    ``(g, groups)``, the smaller g on ties. Cost O(sum · n_groups · n) bitset
    operations: fine for tests and benchmarks, too slow for training.
    """
    counts, channels = _check_inputs(counts, channels)
    best = None
    for g in range(max(counts), sum(counts) + 1):
        groups = repeated_knapsack(counts, g)
        cost = grouping_cost(g, groups, channels)
        if best is None or cost < best[0]:
            best = (cost, g, groups)
    return best[1], best[2]


# --------------------------------------------------------------------------
# Bin packing at a fixed capacity g (items = counts sorted decreasingly)
# --------------------------------------------------------------------------
def _first_fit_decreasing(sizes: Sequence[int], g: int) -> List[List[int]]:
    """First-fit decreasing; ``sizes`` are sorted decreasingly."""
    loads: List[int] = []
    bins: List[List[int]] = []
    for pos, s in enumerate(sizes):
        for b, load in enumerate(loads):
            if load + s <= g:
                loads[b] = load + s
                bins[b].append(pos)
                break
        else:
            loads.append(s)
            bins.append([pos])
    return bins


def _l2_bound(ascending: Sequence[int], prefix: Sequence[int], g: int) -> int:
    """Martello–Toth L2 lower bound on the number of bins of capacity g.

    ``ascending`` are the item sizes sorted increasingly and ``prefix`` their
    prefix sums. For every threshold a in {0} ∪ {sizes <= g/2}: items > g-a
    need a bin each, items in (g/2, g-a] too, and items in [a, g/2] can only
    use the room the latter leave. a = 0 gives max(#items > g/2,
    ceil(sum/g)).
    """
    n, total = len(ascending), prefix[-1]
    i_half = bisect.bisect_right(ascending, g // 2)  # items <= g/2
    best = 0
    previous = None
    for a in [0] + list(ascending[:i_half]):
        if a == previous:
            continue
        previous = a
        i1 = max(bisect.bisect_right(ascending, g - a), i_half)
        n12 = n - i_half  # items in J1 ∪ J2 (all > g/2)
        room = (i1 - i_half) * g - (prefix[i1] - prefix[i_half])  # J2 room
        small = prefix[i_half] - prefix[bisect.bisect_left(ascending, a)]
        best = max(best, n12 + max(0, -(-(small - room) // g)))
    return best


class _BudgetExceeded(Exception):
    """The exact search ran out of nodes."""


class _BinCompletion:
    """Exact test "do ``sizes`` fit into k bins of capacity g?".

    Bin completion (Korf): the largest remaining item opens the next bin,
    which is completed by every subset of the other remaining items whose
    fill keeps the total waste within the slack ``k*g - sum``. Equal sizes
    are interchangeable (only prefixes of a run of equal sizes are tried)
    and failed item sets are memoised.
    """

    def __init__(self, sizes: Sequence[int], g: int, budget: List[int]):
        self.sizes = list(sizes)
        self.g = g
        self.budget = budget  # one-element list, shared between searches
        self.failed = {}  # remaining mask -> largest failing bins_left
        self.bins: List[List[int]] = []

    def solve(self, k: int) -> Optional[List[List[int]]]:
        """Bins (lists of positions) if k bins suffice, None if they don't.

        Raises _BudgetExceeded when the shared node budget is spent.
        """
        self.bins = []
        full = (1 << len(self.sizes)) - 1
        if self._fill(full, sum(self.sizes), k):
            return [list(b) for b in self.bins]
        return None

    def _tick(self) -> None:
        self.budget[0] -= 1
        if self.budget[0] < 0:
            raise _BudgetExceeded

    def _fill(self, rem: int, rem_sum: int, bins_left: int) -> bool:
        if rem == 0:
            return True
        slack = bins_left * self.g - rem_sum
        if slack < 0 or self.failed.get(rem, -1) >= bins_left:
            return False
        self._tick()
        first = (rem & -rem).bit_length() - 1  # largest remaining item
        others = [p for p in range(first + 1, len(self.sizes)) if rem >> p & 1]
        for subset, fill in self._completions(first, others, slack):
            self.bins.append(subset)
            mask = 0
            for p in subset:
                mask |= 1 << p
            if self._fill(rem & ~mask, rem_sum - fill, bins_left - 1):
                return True
            self.bins.pop()
        self.failed[rem] = bins_left
        return False

    def _completions(self, first: int, others: List[int],
                     slack: int) -> Iterator[Tuple[List[int], int]]:
        """Maximal subsets with ``first`` and fill in [g - slack, g].

        Depth-first over ``others`` (include before exclude, so fuller bins
        come first). Only maximal sets are generated (no left-out item fits
        in the leftover room): adding such an item never hurts. Excluding an
        item excludes the rest of its run of equal sizes.
        """
        sizes, g, m = self.sizes, self.g, len(others)
        suffix = [0] * (m + 1)
        skip = [m] * m  # index after the run of equal sizes starting at t
        for t in range(m - 1, -1, -1):
            suffix[t] = suffix[t + 1] + sizes[others[t]]
            if t + 1 < m and sizes[others[t + 1]] == sizes[others[t]]:
                skip[t] = skip[t + 1]
            else:
                skip[t] = t + 1
        chosen = [first]
        # (next position, fill, least final fill, len(chosen), item to add)
        stack = [(0, sizes[first], g - slack, 1, -1)]
        while stack:
            t, fill, need, depth, item = stack.pop()
            del chosen[depth:]
            if item >= 0:
                chosen.append(item)
            if fill + suffix[t] < need:
                continue
            if t == m or fill == g:
                yield list(chosen), fill
                continue
            self._tick()
            s = sizes[others[t]]
            # Leave out the run of size s: the bin must end too full for it.
            stack.append((skip[t], fill, max(need, g - s + 1), len(chosen),
                          -1))
            if fill + s <= g:
                stack.append((t + 1, fill + s, need, len(chosen),
                              others[t]))


# --------------------------------------------------------------------------
# Optimal grouping
# --------------------------------------------------------------------------
def _subset_sums_from(counts: Sequence[int], start: int) -> Iterator[int]:
    """Subset sums of ``counts`` that are >= start, increasing."""
    reach = 1
    for c in counts:
        reach |= reach << c
    reach >>= start
    value = start
    while reach:
        low = (reach & -reach).bit_length() - 1
        value += low
        yield value
        reach >>= low + 1
        value += 1


def optimal_grouping(counts: Sequence[int],
                     channels: int) -> Tuple[int, Groups]:
    """Group size g and groups minimising the MSA cost of Group Attention.

    Minimises ``cost(g, groups) = len(groups) * (4*g*C**2 + 2*g**2*C)`` over
    all g >= max(counts) and all partitions of the windows into groups of
    total <= g. Returns ``(g, groups)``: lists of window indices (each sorted,
    ordered by first index) that partition ``range(len(counts))``.

    Method: with m(g) the fewest groups at capacity g and f(g) the cost of
    one group, the optimum is min_g m(g)·f(g), and only subset sums of the
    counts can be an optimal g (it is the fullest group's total). A
    best-first search pops the g with the smallest lower bound L·f(g),
    starting from L = ceil(sum/g); at g it packs with first-fit decreasing,
    raises L with the Martello–Toth L2 bound, packs with Algorithm 1's
    repeated knapsack (and the same on the counts sorted decreasingly), then
    runs exact bin completion for L groups, raising L on failure. It stops
    when the best grouping found costs no more than every remaining bound;
    g not generated yet are bounded by sum·f(g)/g.

    * Never worse than :func:`algorithm1_grouping`: every g is either pruned
      by a valid lower bound (<= m(g)·f(g) <= Algorithm 1's cost at g) or
      packed with Algorithm 1's own repeated knapsack among others; and
      Algorithm 1's optimum is a subset sum (at any other g the knapsack
      takes the same groups as at the next smaller subset sum).
    * Exact (the true optimum, smallest g on ties) whenever the bin
      completion stays within ``EXACT_SEARCH_BUDGET`` nodes, which is always
      the case for a handful of windows; otherwise the best grouping found.
    """
    g, groups, _ = _optimal_plan(counts, channels, EXACT_SEARCH_BUDGET)
    return g, groups


def _optimal_plan(counts: Sequence[int], channels: int,
                  budget: int) -> Tuple[int, Groups, bool]:
    """:func:`optimal_grouping` plus whether the result is proven optimal."""
    counts, channels = _check_inputs(counts, channels)
    if len(counts) == 1:
        return counts[0], [[0]], True
    search = _Search(counts, channels, budget)
    proven = search.run()
    groups = sorted(sorted(group) for group in search.best_groups)
    return search.best_key[1], groups, proven


class _Search:
    """Best-first search over the group size g (see optimal_grouping)."""

    def __init__(self, counts: List[int], channels: int, budget: int):
        self.counts, self.channels = counts, channels
        self.order = sorted(range(len(counts)), key=lambda i: -counts[i])
        self.sizes = [counts[i] for i in self.order]  # decreasing
        self.ascending = self.sizes[::-1]
        self.prefix = [0]
        for c in self.ascending:
            self.prefix.append(self.prefix[-1] + c)
        self.budget = [budget]  # nodes left for the exact bin completion
        self.best_key = None  # (cost, g) of the best grouping so far
        self.best_groups: Groups = []
        self.offer([list(range(len(counts)))])  # one group: "masking mode"

    def offer(self, groups: Groups) -> None:
        """Record a grouping (window indices) at its fullest group's total."""
        g = max(sum(self.counts[i] for i in group) for group in groups)
        key = (grouping_cost(g, groups, self.channels), g)
        if self.best_key is None or key < self.best_key:
            self.best_key, self.best_groups = key, groups

    def run(self) -> bool:
        """Search; True when no g was left unresolved below the best."""
        total, channels = sum(self.counts), self.channels
        f = lambda g: group_cost(g, channels)  # noqa: E731
        candidates = _subset_sums_from(self.counts, self.sizes[0])
        next_g = next(candidates, None)
        heap: List[Tuple[int, int, int]] = []  # (low*f(g), g, low)
        states = {}  # g -> _GroupSize
        unresolved = None  # smallest (bound, g) given up for lack of budget
        while True:
            # Every g >= next_g costs at least total*f(g)/g: push lazily.
            while next_g is not None and (
                    not heap or total * f(next_g) <= heap[0][0] * next_g):
                low = -(-total // next_g)
                heapq.heappush(heap, (low * f(next_g), next_g, low))
                next_g = next(candidates, None)
            if not heap or heap[0][:2] >= self.best_key:
                return unresolved is None or unresolved >= self.best_key
            bound, g, low = heapq.heappop(heap)
            state = states.get(g)
            if state is None:
                state = states[g] = _GroupSize(self, g, low)
            low = state.step()
            if state.gave_up and unresolved is None:
                unresolved = (bound, g)
            if low is not None:
                heapq.heappush(heap, (low * f(g), g, low))


class _GroupSize:
    """Bounds low <= m(g) <= upper on the fewest groups at capacity g.

    Step 1: the L2 bound (g is re-queued if it rises). Then first-fit
    decreasing and repeated knapsack on the windows in index order
    (Algorithm 1's packing) and sorted decreasingly, and exact bin
    completion for ``low`` bins, one ``low`` per step. Each step returns the
    raised ``low`` to re-queue g with, or None when g is settled (bounds
    meet) or the exact search ran out of budget.
    """

    def __init__(self, search: _Search, g: int, low: int):
        self.search, self.g, self.low = search, g, low
        self.upper = len(search.counts)
        self.l2_done = self.packed = self.gave_up = False
        self.exact = None

    def _offer(self, groups: Groups, positions: bool) -> None:
        """Offer groups of window indices, or of positions in sorted order."""
        if positions:
            groups = [[self.search.order[p] for p in grp] for grp in groups]
        self.search.offer(groups)
        self.upper = min(self.upper, len(groups))

    def step(self) -> Optional[int]:
        search, g = self.search, self.g
        if not self.l2_done:
            self.l2_done = True
            raised = _l2_bound(search.ascending, search.prefix, g)
            if raised > self.low:
                self.low = raised
                return raised  # re-queue: g may no longer be the cheapest
        if not self.packed:
            self.packed = True
            self._offer(_first_fit_decreasing(search.sizes, g), True)
            if self.upper > self.low:
                self._offer(repeated_knapsack(search.counts, g), False)
            if self.upper > self.low:
                self._offer(repeated_knapsack(search.sizes, g), True)
        if self.upper <= self.low:
            return None
        if self.exact is None:
            self.exact = _BinCompletion(search.sizes, g, search.budget)
        try:
            bins = self.exact.solve(self.low)
        except _BudgetExceeded:
            self.gave_up = True
            return None
        if bins is not None:
            self._offer(bins, True)
            return None
        self.low += 1
        return self.low if self.low < self.upper else None


# --------------------------------------------------------------------------
# Window counts of a stage
# --------------------------------------------------------------------------
def window_counts(mask_units: np.ndarray, tokens_per_unit: int, window: int,
                  shift: int) -> List[int]:
    """Visible-token count of every non-empty window, in window-id order.

    ``mask_units`` (Hu, Wu) is True where a 32 px unit is masked; the stage
    grid has (Hu*t, Wu*t) tokens (t = ``tokens_per_unit``) and a token is
    visible iff its unit is not masked. Windows come from absolute
    coordinates (as GreenMIM): with o = (window - shift) % window, token
    (r, c) lies in window ((r+o)//window, (c+o)//window), so shifted windows
    split at c ≡ shift (mod window) and the border windows are partial.
    """
    mask_units = np.asarray(mask_units)
    if (mask_units.ndim != 2 or mask_units.dtype != np.bool_
            or mask_units.size == 0):
        raise ValueError('mask_units must be a non-empty 2-D bool array, got '
                         f'{mask_units.dtype} {mask_units.shape}')
    t = _check_int(tokens_per_unit, 'tokens_per_unit', 1)
    window = _check_int(window, 'window', 1)
    shift = _check_int(shift, 'shift', 0)
    if shift >= window:
        raise ValueError(f'shift must be < window, got {shift} >= {window}')
    o = (window - shift) % window
    # Visible tokens per row and per column of one unit row/column are
    # separable: count(window) = sum over units of rows_in * cols_in.
    hu, wu = mask_units.shape
    row_win = (np.arange(hu * t) + o) // window  # window row of token row
    col_win = (np.arange(wu * t) + o) // window
    n_r, n_c = int(row_win[-1]) + 1, int(col_win[-1]) + 1
    # overlap[i, u] = number of token rows of unit u inside window row i.
    row_overlap = np.zeros((n_r, hu), dtype=np.int64)
    np.add.at(row_overlap, (row_win, np.arange(hu * t) // t), 1)
    col_overlap = np.zeros((n_c, wu), dtype=np.int64)
    np.add.at(col_overlap, (col_win, np.arange(wu * t) // t), 1)
    visible = (~mask_units).astype(np.int64)
    counts = row_overlap @ visible @ col_overlap.T  # (n_r, n_c)
    return [int(c) for c in counts.ravel() if c > 0]


# --------------------------------------------------------------------------
# Static budget: one (G, g) for every mask of a ratio and image size
# --------------------------------------------------------------------------
def _window_unit_overlap(size: int, t: int, window: int,
                         shift: int) -> np.ndarray:
    """(windows, units) token overlap of one axis: entry [i, u] is the number
    of the ``size * t`` token rows of unit u inside window row i (window rows
    from absolute coordinates, as :func:`window_counts`)."""
    o = (window - shift) % window
    win = (np.arange(size * t) + o) // window
    overlap = np.zeros((int(win[-1]) + 1, size), dtype=np.int64)
    np.add.at(overlap, (win, np.arange(size * t) // t), 1)
    return overlap


def _worst_case_windows(units_hw: Sequence[int], t: int, window: int,
                        shift: int, visible: int) -> Tuple[int, int, int]:
    """(largest window count, most non-empty windows, visible tokens) over
    every mask of ``units_hw`` with ``visible`` visible units (exact: the k
    best units of each window, the k units touching most windows)."""
    rows = _window_unit_overlap(int(units_hw[0]), t, window, shift)
    cols = _window_unit_overlap(int(units_hw[1]), t, window, shift)
    # per (window, unit) token count; a window's largest count takes its k
    # fullest units
    per = (rows[:, None, :, None] * cols[None, :, None, :]).reshape(
        rows.shape[0] * cols.shape[0], -1)
    largest = int(np.sort(per, axis=1)[:, ::-1][:, :visible].sum(1).max())
    touched = ((rows > 0).sum(0)[:, None] * (cols > 0).sum(0)[None, :]).ravel()
    most = min(per.shape[0], int(np.sort(touched)[::-1][:visible].sum()))
    return largest, most, visible * t * t


def first_fit_bound(total: int, largest: int, g: int, items: int) -> int:
    """Most groups first-fit decreasing can open at capacity ``g`` for items
    of sizes in [1, ``largest``] summing to ``total`` (at most ``items``).

    Let s be the item opening the last group k. If s > g/2, every item so far
    is > g/2 and sits alone: k <= total // (g//2 + 1). Otherwise every earlier
    group holds more than g - s >= g - min(largest, g//2) tokens (s did not
    fit), so total >= (k-1)(g - min(largest, g//2) + 1) + 1.
    ValueError if ``g < largest``.
    """
    if g < largest:
        raise ValueError(f'capacity {g} is below the largest count {largest}')
    if g >= total:
        return 1
    half = g // 2
    alone = total // (half + 1) if largest > half else 0
    shared = 1 + (total - 1) // (g - min(largest, half) + 1)
    return min(items, max(alone, shared))


@functools.lru_cache(maxsize=256)
def static_budget(units_hw: Tuple[int, int], tokens_per_unit: int,
                  window: int, shift: int, visible: int) -> Tuple[int, int]:
    """The (G, g) that every mask with ``visible`` visible units fits.

    ``units_hw`` is the unit grid (Hu, Wu) (e.g. 7x7 at 224 px), the stage
    grid has ``tokens_per_unit`` tokens per unit side, windows ``window`` /
    ``shift`` from absolute coordinates. From the worst case over all such
    masks (the largest possible window count s, the most non-empty windows
    n, N = visible * t**2 tokens), every g in [s, N] is feasible with
    G(g) = :func:`first_fit_bound` groups; the budget is the g minimising the
    attention work G·g² (then the slots G·g): the QKV and output projections
    run on the N tokens, so padding costs only attention. The shape depends
    on the grid and the number of visible units only, i.e. on (mask ratio,
    image size); :func:`static_grouping` packs any such mask into it.
    ValueError for bad arguments.
    """
    t = _check_int(tokens_per_unit, 'tokens_per_unit', 1)
    window = _check_int(window, 'window', 1)
    shift = _check_int(shift, 'shift', 0)
    hu, wu = (_check_int(v, 'units_hw', 1) for v in units_hw)
    visible = _check_int(visible, 'visible', 1)
    if shift >= window or visible > hu * wu:
        raise ValueError(f'need shift < window and visible <= {hu * wu} units; got '
                         f'shift={shift}, window={window}, visible={visible}')
    largest, most, total = _worst_case_windows((hu, wu), t, window, shift,
                                               visible)
    best = None
    for g in range(largest, total + 1):
        n_groups = first_fit_bound(total, largest, g, most)
        key = (n_groups * g * g, n_groups * g)
        if best is None or key < best[0]:
            best = (key, n_groups, g)
    return best[1], best[2]


@functools.lru_cache(maxsize=256)
def packed_block_budget(units_hw: Tuple[int, int], tokens_per_unit: int,
                        window: int, shift: int, visible: int,
                        block: int) -> int:
    """Blocks of ``block`` tokens that hold every such mask's windows, each
    window starting at a block boundary (FlexAttention's packed layout):
    sum(ceil(c/block)) <= (N + n*(block-1)) // block for n non-empty windows,
    and <= n * ceil(s/block) (worst case as :func:`static_budget`)."""
    block = _check_int(block, 'block', 1)
    largest, most, total = _worst_case_windows(
        units_hw, _check_int(tokens_per_unit, 'tokens_per_unit', 1), window,
        shift, visible)
    return min((total + most * (block - 1)) // block,
               most * -(-largest // block))


def static_grouping(counts: Sequence[int], budget: Tuple[int, int]) -> Groups:
    """Pack window ``counts`` into exactly ``budget[0]`` groups of capacity
    ``budget[1]`` (first-fit decreasing; trailing groups may be empty).

    Groups are lists of window indices (largest count first). RuntimeError if the counts do not fit
    (impossible for a mask the budget was computed for, see
    :func:`static_budget`).
    """
    groups = _static_first_fit(counts, budget)[0]
    return groups + [[] for _ in range(budget[0] - len(groups))]


def static_slot_starts(counts: Sequence[int], budget: Tuple[int, int]) -> List[int]:
    """The first slot (in the flat ``G*g`` layout) of every window of :func:`static_grouping`'s
    packing: group i's windows follow each other from slot ``i*g`` in the group's order.
    RuntimeError as :func:`static_grouping`."""
    return _static_first_fit(counts, budget)[1]


def _static_first_fit(counts: Sequence[int],
                      budget: Tuple[int, int]) -> Tuple[Groups, List[int]]:
    """(groups, first slot of every window): first-fit decreasing of ``counts`` (ties in
    window order) into ``budget`` (see :func:`static_grouping`)."""
    n_groups, g = budget
    counts = list(counts)
    loads: List[int] = []
    groups: Groups = []
    starts = [0] * len(counts)
    room = g - min(counts, default=0)  # a bin loaded beyond this takes no window any more
    lo = 0  # bins before lo are such full bins: skipped (same first fit, fewer tests)
    for w in sorted(range(len(counts)), key=counts.__getitem__, reverse=True):  # stable
        size = counts[w]
        while lo < len(loads) and loads[lo] > room:
            lo += 1
        for b in range(lo, len(loads)):
            if loads[b] + size <= g:
                break
        else:
            b = len(loads)
            if b >= n_groups or size > g:
                raise RuntimeError(f'window counts (max {max(counts)}, sum {sum(counts)}) do '
                                   f'not fit the static budget of {n_groups} groups of {g}')
            loads.append(0)
            groups.append([])
        starts[w] = b * g + loads[b]
        loads[b] += size
        groups[b].append(w)
    return groups, starts

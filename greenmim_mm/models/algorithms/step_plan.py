"""The per-step plan off the critical path: computed one step ahead, moved in one copy.

A pre-training step needs a *plan* before its first kernel: the mask of the step and everything
derived from it on the host (the backbone's ``sparse_geometry``, the decoders' cell indices, the
heads' loss weights). Masks are a pure function of (seed, rank, step), so the plan of step s+1
can be built while step s runs:

* :func:`pack_plan` flattens a plan (any nesting of dataclasses, dicts, lists and tuples whose
  leaves are CPU tensors or plain values: it does not need to know the plan's fields) into one
  byte buffer, pinned when the target is a CUDA device: the tensors of one dtype lie back to
  back in one aligned segment (one ``torch.cat`` per dtype), and the structure is recorded
  once as a small rebuild program;
* :meth:`PackedPlan.to` moves that buffer with **one** non-blocking copy and rebuilds the same
  structure from views of the device buffer (one dtype view per segment, one ``as_strided``
  view per tensor; no kernel, no sync; a rebuilt dataclass runs its ``__post_init__``, as
  its constructor would, e.g. for views of its fields); a leaf that is neither a tensor nor a plain value but
  has a ``to`` method (e.g. a FlexAttention ``BlockMask``) is moved with its own ``to``;
* :class:`PlanPrefetcher` builds the next step's packed plan in a background thread, and no
  build is in flight when the process forks (DataLoader workers): a fork waits for it, and the
  child starts with an empty prefetcher.

The plan of a step is the same whether it was prefetched or built on demand (a prefetch whose
key (step, image size, device, mode) does not match the step asked for, e.g. after a resume,
is dropped), so the mask sequence and exact resume are unchanged.
"""
import copy
import dataclasses
import functools
import math
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Hashable, List, Optional, Tuple

import torch

from greenmim_mm.engine.sync_audit import declare_pinned

_ALIGN = 64  # bytes: every dtype segment starts at a multiple (any dtype's view is aligned)
# bytes: every tensor starts at a multiple (torch.compile's GPU kernels assume 16-byte aligned
# inputs and copy misaligned ones every call)
_TENSOR_ALIGN = 16

# Rebuild program nodes: (_TENSOR, leaf index), (_CONST, value), (_MOVE, value),
# (_REF, node id), (_NODE, node id, kind, template, [(name, child node)]) of the containers.
_TENSOR, _CONST, _MOVE, _REF, _NODE = range(5)
_FIELDS: Dict[type, Tuple[str, ...]] = {}  # dataclass type -> field names (cached)
_ATOMS = frozenset((type(None), bool, int, float, str, bytes, torch.dtype, torch.device))


class PackedPlan:
    """A plan whose CPU tensors live in one (pinned) uint8 buffer; see :func:`pack_plan`.

    Attributes:
        host (Any): the plan as given (CPU tensors), e.g. for the host-side mask.
        buffer (torch.Tensor): (nbytes,) uint8: per dtype one segment at an aligned offset,
            holding that dtype's tensors back to back (contiguous, in plan order).
    """

    def __init__(self, host: Any, buffer: torch.Tensor, segments: list, leaves: list,
                 program: tuple):
        self.host, self.buffer = host, buffer
        self._segments, self._leaves, self._program = segments, leaves, program

    def to(self, device) -> Any:
        """The plan's structure with its tensors on ``device``: one non-blocking copy of the
        buffer, then views (dtype, shape) of it; on the CPU the views share the host buffer."""
        device = torch.device(device)
        buf = self.buffer.to(device, non_blocking=True)
        typed = [buf[start:stop].view(dtype) for dtype, start, stop in self._segments]
        views = [typed[seg].as_strided(shape, stride, offset)
                 for seg, shape, stride, offset in self._leaves]
        return _run(self._program, views, device, {})


def pack_plan(plan: Any, device) -> PackedPlan:
    """Pack every CPU tensor of ``plan`` into one uint8 buffer (pinned if ``device`` is CUDA and
    CUDA is available). Tensors are stored contiguous. TypeError for a tensor not on the CPU."""
    tensors: List[torch.Tensor] = []
    program = _flatten(plan, tensors, {})
    segments, leaves, pieces, nbytes = _layout(tuple((t.dtype, t.shape) for t in tensors))
    pin = torch.device(device).type == 'cuda' and torch.cuda.is_available()
    buffer = declare_pinned(torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin))
    for (dtype, start, stop), recipe in zip(segments, pieces):
        _fill(buffer[start:stop].view(dtype), tensors, recipe)
    return PackedPlan(plan, buffer, segments, leaves, program)


@functools.lru_cache(maxsize=64)
def _layout(signature: tuple) -> tuple:
    """The buffer layout of tensors of ``signature`` ((dtype, shape) per tensor; cached: with
    static plan shapes every step has the same): (segments [(dtype, start, stop) bytes],
    leaves [(segment, shape, stride, element offset)], pieces [per segment: a tensor index, or
    -k for k padding elements], total bytes). Every tensor starts ``_TENSOR_ALIGN``-aligned."""
    by_dtype: Dict[torch.dtype, List[int]] = {}
    for i, (dtype, _) in enumerate(signature):
        by_dtype.setdefault(dtype, []).append(i)
    segments, leaves, pieces, off = [], [None] * len(signature), [], 0
    for seg, (dtype, group) in enumerate(by_dtype.items()):
        size, count, recipe = dtype.itemsize, 0, []
        per = max(1, _TENSOR_ALIGN // size)  # elements per alignment step
        for i in group:
            pad = -count % per
            if pad:
                recipe.append(-pad)
                count += pad
            shape = tuple(signature[i][1])
            leaves[i] = (seg, shape, _contiguous_strides(shape), off // size + count)
            recipe.append(i)
            count += math.prod(shape)
        segments.append((dtype, off, off + count * size))
        pieces.append(recipe)
        off += -(-(count * size) // _ALIGN) * _ALIGN
    return segments, leaves, pieces, off


@functools.lru_cache(maxsize=1024)
def _contiguous_strides(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    strides, step = [], 1
    for s in reversed(shape):
        strides.append(step)
        step *= max(int(s), 1)
    return tuple(reversed(strides))


def _fill(segment: torch.Tensor, tensors: List[torch.Tensor], recipe: List[int]) -> None:
    """Copy the tensors of ``recipe`` (one dtype; -k: k padding elements) back to back into
    the 1-D ``segment`` (one ``cat``)."""
    parts = [_padding(segment.dtype, -i) if i < 0 else
             (tensors[i].detach() if tensors[i].requires_grad else tensors[i]).reshape(-1)
             for i in recipe]
    if parts:
        torch.cat(parts, out=segment)


@functools.lru_cache(maxsize=256)
def _padding(dtype: torch.dtype, count: int) -> torch.Tensor:
    """(count,) zeros of ``dtype`` (cached, only read)."""
    return torch.zeros(count, dtype=dtype)


def _fields(cls) -> Tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _flatten(obj, out: List[torch.Tensor], memo: dict):
    """The rebuild program of ``obj``, appending its tensors to ``out`` (an object shared by
    several keys is packed once and stays shared)."""
    if type(obj) in _ATOMS:
        return (_CONST, obj)
    if isinstance(obj, torch.Tensor):
        if not obj.is_cpu:
            raise TypeError(f'a plan holds host tensors only; got one on {obj.device}')
        out.append(obj)
        return (_TENSOR, len(out) - 1)
    if hasattr(type(obj), '__dataclass_fields__') and not isinstance(obj, type):
        kind, items = 'dataclass', [(n, getattr(obj, n)) for n in _fields(type(obj))]
    elif isinstance(obj, dict):
        kind, items = 'dict', list(obj.items())
    elif isinstance(obj, (list, tuple)):
        if type(obj) is tuple and all(type(v) in _ATOMS for v in obj):
            return (_CONST, obj)  # e.g. a grid size: immutable, kept as it is
        kind, items = 'seq', list(enumerate(obj))
    else:
        movable = hasattr(obj, 'to') and not isinstance(obj, (str, bytes, type))
        return (_MOVE if movable else _CONST, obj)
    if id(obj) in memo:
        return (_REF, memo[id(obj)])
    node_id = memo[id(obj)] = len(memo)
    if kind == 'dataclass':  # plain fields stay as copy.copy leaves them
        children = [(n, _flatten(c, out, memo)) for n, c in items if type(c) not in _ATOMS]
    else:
        children = [(n, _flatten(c, out, memo)) for n, c in items]
    return (_NODE, node_id, kind, obj, children)


def _run(node, views: List[torch.Tensor], device, built: dict):
    """Execute a rebuild program: the structure with tensor ``views``."""
    op = node[0]
    if op == _TENSOR:
        return views[node[1]]
    if op == _CONST:
        return node[1]
    if op == _MOVE:
        return node[1].to(device)
    if op == _REF:
        return built[node[1]]
    _, node_id, kind, obj, children = node
    if kind == 'dataclass':  # a shallow copy (faster than copy.copy where there is a __dict__)
        if hasattr(obj, '__dict__') and not hasattr(type(obj), '__slots__'):
            new = object.__new__(type(obj))
            new.__dict__.update(obj.__dict__)
        else:
            new = copy.copy(obj)
        built[node_id] = new
        for name, child in children:
            object.__setattr__(new, name, _run(child, views, device, built))
        post_init = getattr(new, '__post_init__', None)
        if post_init is not None:  # as the dataclass's constructor would (e.g. derived views)
            post_init()
    elif kind == 'dict':
        new = built[node_id] = type(obj)()
        for key, child in children:
            new[key] = _run(child, views, device, built)
    else:
        values = [_run(child, views, device, built) for _, child in children]
        new = values if isinstance(obj, list) else (
            type(obj)(*values) if hasattr(obj, '_fields') else type(obj)(values))
        built[node_id] = new
    return new


class PlanPrefetcher:
    """Build ``make(key)`` for the next key in a background thread while the caller works.

    ``get(key, make, next_key)`` returns ``make(key)`` (the prefetched result when its key
    matches, else built now) and starts building ``make(next_key)``. ``make`` must be a pure
    function of its key. A copy or pickle of the owner gets an empty prefetcher.

    Fork safety: before the process forks (``os.fork``, multiprocessing's 'fork' context, e.g.
    DataLoader workers), every live prefetcher waits for its pending build, so no build holds a
    lock (allocator, OpenMP, CUDA host allocation) at the fork; the child's prefetchers start
    empty (the parent's worker thread does not exist there). Prefetchers are tracked weakly.
    """

    def __init__(self):
        self._executor: Optional[ThreadPoolExecutor] = None
        self._pending = None  # (key, future)
        _LIVE.add(self)

    def get(self, key: Hashable, make: Callable[[Hashable], Any],
            next_key: Optional[Hashable] = None) -> Any:
        result = self.take(key, make)
        if next_key is not None:
            self.start(next_key, make)
        return result

    def take(self, key: Hashable, make: Callable[[Hashable], Any]) -> Any:
        """``make(key)``: the pending build's result when its key matches (its error, if any,
        is raised here), else built now; a pending build of another key is dropped."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == key:
            return pending[1].result()
        return make(key)

    def start(self, key: Hashable, make: Callable[[Hashable], Any]) -> None:
        """Start building ``make(key)`` in the background thread. Call it after the caller's
        own host work of the step: the build then competes for the GIL with the step's
        device work (which releases it while it waits), not with that host work."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=_THREAD_PREFIX)
        self._pending = (key, self._executor.submit(make, key))

    def clear(self) -> None:
        """Drop a pending prefetch (its result is never used)."""
        self._pending = None

    def wait(self) -> None:
        """Block until the pending build (if any) has finished; its error, if any, is kept for
        :meth:`get` to raise. A no-op in the build thread itself."""
        pending = self._pending
        if pending is not None and not threading.current_thread().name.startswith(
                _THREAD_PREFIX):
            pending[1].exception()

    def _forget_in_child(self) -> None:
        self._executor, self._pending = None, None

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    def __deepcopy__(self, memo):
        return PlanPrefetcher()


_THREAD_PREFIX = 'greenmim-plan'
_LIVE: 'weakref.WeakSet[PlanPrefetcher]' = weakref.WeakSet()


def _drain_before_fork() -> None:
    for prefetcher in list(_LIVE):
        prefetcher.wait()


def _reset_after_fork_in_child() -> None:
    for prefetcher in list(_LIVE):
        prefetcher._forget_in_child()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(before=_drain_before_fork, after_in_child=_reset_after_fork_in_child)

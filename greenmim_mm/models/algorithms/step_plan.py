"""The per-step plan off the critical path: computed one step ahead, moved in one copy.

A pre-training step needs a *plan* before its first kernel: the mask of the step and everything
derived from it on the host (the backbone's ``sparse_geometry``, the decoders' cell indices, the
heads' loss weights). Masks are a pure function of (seed, rank, step), so the plan of step s+1
can be built while step s runs:

* :func:`pack_plan` flattens a plan (any nesting of dataclasses, dicts, lists and tuples whose
  leaves are CPU tensors or plain values: it does not need to know the plan's fields) into one
  byte buffer, pinned when the target is a CUDA device;
* :meth:`PackedPlan.to` moves that buffer with **one** non-blocking copy and rebuilds the same
  structure from views of the device buffer (no kernel, no sync); a leaf that is neither a
  tensor nor a plain value but has a ``to`` method (e.g. a FlexAttention ``BlockMask``) is moved
  with its own ``to``;
* :class:`PlanPrefetcher` builds the next step's packed plan in a background thread.

The plan of a step is the same whether it was prefetched or built on demand (a prefetch whose
key (step, image size, device, mode) does not match the step asked for, e.g. after a resume,
is dropped), so the mask sequence and exact resume are unchanged.
"""
import copy
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Hashable, List, Optional

import torch

from greenmim_mm.engine.sync_audit import declare_pinned

_ALIGN = 64  # bytes: every tensor starts at a multiple (any dtype's view is aligned)


class PackedPlan:
    """A plan whose CPU tensors live in one (pinned) uint8 buffer; see :func:`pack_plan`.

    Attributes:
        host (Any): the plan as given (CPU tensors), e.g. for the host-side mask.
        buffer (torch.Tensor): (nbytes,) uint8, every tensor of the plan at an aligned offset.
    """

    def __init__(self, host: Any, buffer: torch.Tensor, layout: list):
        self.host, self.buffer, self._layout = host, buffer, layout

    def to(self, device) -> Any:
        """The plan's structure with its tensors on ``device``: one non-blocking copy of the
        buffer, then views (dtype, shape) of it; on the CPU the views share the host buffer."""
        device = torch.device(device)
        buf = self.buffer.to(device, non_blocking=True)
        views = [buf[off:off + nbytes].view(dtype).view(shape)
                 for off, nbytes, dtype, shape in self._layout]
        return _rebuild(self.host, iter(views), device, {})


def pack_plan(plan: Any, device) -> PackedPlan:
    """Pack every CPU tensor of ``plan`` into one uint8 buffer (pinned if ``device`` is CUDA and
    CUDA is available). Tensors are stored contiguous. TypeError for a tensor not on the CPU."""
    tensors: List[torch.Tensor] = []
    _collect(plan, tensors, set())
    layout, off = [], 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        layout.append((off, nbytes, t.dtype, tuple(t.shape)))
        off += -(-nbytes // _ALIGN) * _ALIGN
    pin = torch.device(device).type == 'cuda' and torch.cuda.is_available()
    buffer = declare_pinned(torch.empty(off, dtype=torch.uint8, pin_memory=pin))
    for t, (o, nbytes, _, _) in zip(tensors, layout):
        if nbytes:
            buffer[o:o + nbytes].copy_(t.contiguous().view(-1).view(torch.uint8))
    return PackedPlan(plan, buffer, layout)


def _children(obj):
    """(kind, items) of a container node, None for a leaf."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return 'dataclass', [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    if isinstance(obj, dict):
        return 'dict', list(obj.items())
    if isinstance(obj, (list, tuple)):
        return 'seq', list(enumerate(obj))
    return None


def _collect(obj, out: List[torch.Tensor], seen: set) -> None:
    if isinstance(obj, torch.Tensor):
        if obj.device.type != 'cpu':
            raise TypeError(f'a plan holds host tensors only; got one on {obj.device}')
        out.append(obj)
        return
    node = _children(obj)
    if node is None or id(obj) in seen:
        return
    seen.add(id(obj))  # an object shared by several keys is packed once and stays shared
    for _, child in node[1]:
        _collect(child, out, seen)


def _rebuild(obj, views, device, memo: dict):
    if isinstance(obj, torch.Tensor):
        return next(views)
    node = _children(obj)
    if node is None:
        movable = hasattr(obj, 'to') and not isinstance(obj, (str, bytes, type))
        return obj.to(device) if movable else obj
    if id(obj) in memo:
        return memo[id(obj)]
    kind, items = node
    if kind == 'dataclass':
        new = copy.copy(obj)
        memo[id(obj)] = new
        for name, child in items:
            object.__setattr__(new, name, _rebuild(child, views, device, memo))
    elif kind == 'dict':
        new = type(obj)()
        memo[id(obj)] = new
        for key, child in items:
            new[key] = _rebuild(child, views, device, memo)
    else:
        values = [_rebuild(child, views, device, memo) for _, child in items]
        new = values if isinstance(obj, list) else (
            type(obj)(*values) if hasattr(obj, '_fields') else type(obj)(values))
        memo[id(obj)] = new
    return new


class PlanPrefetcher:
    """Build ``make(key)`` for the next key in a background thread while the caller works.

    ``get(key, make, next_key)`` returns ``make(key)`` (the prefetched result when its key
    matches, else built now) and starts building ``make(next_key)``. ``make`` must be a pure
    function of its key. A copy or pickle of the owner gets an empty prefetcher.
    """

    def __init__(self):
        self._executor: Optional[ThreadPoolExecutor] = None
        self._pending = None  # (key, future)

    def get(self, key: Hashable, make: Callable[[Hashable], Any],
            next_key: Optional[Hashable] = None) -> Any:
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == key:
            result = pending[1].result()  # re-raises the build's error, if any
        else:
            result = make(key)
        if next_key is not None:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix='greenmim-plan')
            self._pending = (next_key, self._executor.submit(make, next_key))
        return result

    def clear(self) -> None:
        """Drop a pending prefetch (its result is never used)."""
        self._pending = None

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    def __deepcopy__(self, memo):
        return PlanPrefetcher()

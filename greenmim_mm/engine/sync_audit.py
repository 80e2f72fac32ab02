"""Find host-device synchronisations in a training step without a GPU (``SyncAudit``).

A ``TorchDispatchMode`` sees every ATen call of the step (forward, autograd backward and the
optimizer) and records the calls that make the host wait for the device, or that copy from
the host in a blocking way, on a *device* that is not the CPU (the ``meta`` device in the tests
and the CPU rehearsal, ``cuda`` on a GPU):

* ``h2d_blocking``: a host (CPU) tensor copied to the device with ``non_blocking=False``
  (``aten._to_copy`` / ``aten.copy_``), or a device op given a host tensor operand (e.g. a CPU
  index into a device tensor, which the op copies itself, blocking). Not visible to a dispatch
  mode: ``torch.tensor(data, device=dev)`` (its copy happens below the dispatcher).
* ``h2d_unpinned``: a ``non_blocking=True`` host-to-device copy whose source is not page-locked.
  CUDA stages a copy from pageable memory through its own pinned buffer and synchronises the
  stream first, so it blocks like ``non_blocking=False`` (CUDA runtime API, "API
  synchronization behavior": memcpy from pageable host memory). The pinning rule:

  - a source that ``is_pinned()`` (or a view of such memory) is pinned;
  - on a machine that cannot pin (no CUDA: the meta-device audit on the CPU), the audit cannot
    see pinning, so a source counts as pinned when it is (a view of) a host buffer declared
    with :func:`declare_pinned`, which our code calls on the staging buffers it allocates
    with ``pin_memory=True`` whenever the target is a CUDA device (``step_plan.pack_plan``).
    On a CUDA target only ``is_pinned()`` counts: a declared but unpinned buffer is an event.
* ``read_back``: a device value read on the host: ``.item()``, ``float()``, ``int()``,
  ``bool()`` (``aten._local_scalar_dense`` / ``aten.is_nonzero``), a device-to-host copy
  (``.cpu()``, ``.tolist()``, ``.numpy()``), ``torch.equal``.
* ``data_dependent``: an op whose output *shape* depends on device values (``nonzero``, boolean
  indexing, ``masked_select``, ``unique``, ``repeat_interleave`` without ``output_size``):
  CUDA must sync to learn the size, and ``torch.compile`` breaks the graph there.

Every event keeps the op and the innermost frame of project code (file:line) that issued it.
Ops on CPU tensors (the host-side plan, the optimizer's CPU step counters) are not events.

On ``meta`` an event's op cannot run (no values); the audit then returns a stand-in so that the
step can continue and every event is counted: False for a bool read, 1 for a number (also as
every element of a host copy, e.g. ``.tolist()``), an
all-visible (upper bound) shape for ``nonzero`` (``meta_nonzero_assume_all_nonzero``). Counting
is therefore exact for the first event and best effort after it; the tests assert that there
are none.
"""
import collections
import os
import traceback
import weakref
from typing import List, NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

_READ_BACK = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default}
_DATA_DEPENDENT = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default,
                   aten.unique_dim.default, aten.unique_consecutive.default,
                   aten.argwhere.default}
_COPIES = {aten._to_copy.default, aten.copy_.default}
_PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# storage address -> a host buffer allocated pinned for CUDA targets (see declare_pinned)
_DECLARED_PINNED: 'weakref.WeakValueDictionary[int, torch.Tensor]' = \
    weakref.WeakValueDictionary()


def declare_pinned(buffer: torch.Tensor) -> torch.Tensor:
    """Declare ``buffer`` (a host tensor) a staging buffer that its allocator pins whenever
    the copy target is a CUDA device; returns ``buffer``.

    Only :class:`SyncAudit` reads the declaration, and only for copies to a non-CUDA device
    (the ``meta`` audit on a machine that cannot pin): a ``non_blocking`` copy from the buffer
    or a view of it then counts as a copy from pinned memory, as it is on a GPU. Held weakly:
    a freed buffer's declaration goes with it.
    """
    if buffer.device.type != 'cpu':
        raise ValueError(f'declare_pinned: a host buffer is expected, got one on {buffer.device}')
    _DECLARED_PINNED[buffer.untyped_storage().data_ptr()] = buffer
    return buffer


def _pinned(src: torch.Tensor, dst_device: torch.device) -> bool:
    """Whether a host-to-``dst_device`` copy from ``src`` reads page-locked memory (the
    module docstring's pinning rule)."""
    if src.is_pinned():
        return True
    if dst_device.type == 'cuda':
        return False
    ptr = src.untyped_storage().data_ptr()
    owner = _DECLARED_PINNED.get(ptr)
    return owner is not None and owner.untyped_storage().data_ptr() == ptr


class SyncEvent(NamedTuple):
    kind: str     # 'h2d_blocking', 'h2d_unpinned', 'read_back' or 'data_dependent'
    op: str       # the ATen op
    where: str    # innermost project frame, 'path:line in function'


def _on_device(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type != 'cpu'


def _on_host(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == 'cpu'


def _tensors(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, (list, tuple)):
            yield from (t for t in a if isinstance(t, torch.Tensor))
        elif isinstance(a, torch.Tensor):
            yield a


def _mixes_host_and_device(args, kwargs) -> bool:
    """A device op with a host operand of more than one element (a 0-d CPU tensor is a scalar
    operand, e.g. the optimizer's step count, and is no copy)."""
    ts = list(_tensors(args, kwargs))
    return any(_on_device(t) for t in ts) and any(_on_host(t) and t.dim() > 0 for t in ts)


def _caller() -> str:
    """The innermost stack frame outside torch (the code that issued the op), as
    'path:line in function', the path relative to the project root when inside it."""
    frames = [f for f in traceback.extract_stack()
              if f.filename != __file__ and '/torch/' not in f.filename]
    if not frames:
        return '?'
    f = frames[-1]
    root = os.path.dirname(_PROJECT)
    path = os.path.relpath(f.filename, root) if f.filename.startswith(root) else f.filename
    return f'{path}:{f.lineno} in {f.name}'


def _stand_in(func, t: torch.Tensor):
    """A value for a read of a meta tensor (which has none): False for a bool (the usual
    'anything wrong?' test), 1 for a number."""
    if func is not aten._local_scalar_dense.default or t.dtype == torch.bool:
        return False
    return 1.0 if t.is_floating_point() else 1


def _on_host_from_meta(func, args, kwargs) -> bool:
    """A copy of a meta tensor to the host (``.cpu()``, ``.tolist()``): it has no values."""
    if func is aten._to_copy.default:
        dst = kwargs.get('device')
        return args[0].device.type == 'meta' and dst is not None and \
            torch.device(dst).type == 'cpu'
    return args[1].device.type == 'meta' and args[0].device.type == 'cpu'


def _copy_stand_in(func, args, kwargs) -> torch.Tensor:
    """The host copy of a meta tensor, with the stand-in values of ``_stand_in`` (False for
    bool, 1 for numbers)."""
    if func is aten._to_copy.default:
        src = args[0]
        out = torch.empty(src.shape, dtype=kwargs.get('dtype') or src.dtype)
    else:
        out = args[0]
    return out.fill_(0 if out.dtype == torch.bool else 1)


class SyncAudit(TorchDispatchMode):
    """Record the synchronising calls of the code run under it (see the module docstring).

    Usage::

        with SyncAudit() as audit:
            step()
        assert not audit.events, audit.summary()
    """

    def __init__(self):
        super().__init__()
        self.events: List[SyncEvent] = []
        self._patch = None

    def __enter__(self):
        # meta's nonzero (boolean indexing) assumes all-nonzero instead of refusing
        from torch.fx.experimental import _config
        self._patch = _config.patch(meta_nonzero_assume_all_nonzero=True)
        self._patch.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._patch.__exit__(*exc)

    def _record(self, kind: str, func) -> None:
        self.events.append(SyncEvent(kind, str(func.overloadpacket.__name__), _caller()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _COPIES:
            self._check_copy(func, args, kwargs)
            if _on_host_from_meta(func, args, kwargs):
                return _copy_stand_in(func, args, kwargs)
        elif func in _READ_BACK and any(_on_device(a) for a in args):
            self._record('read_back', func)
            if args[0].device.type == 'meta':
                return _stand_in(func, args[0])
        elif func in _DATA_DEPENDENT and _on_device(args[0]):
            self._record('data_dependent', func)
        elif func is aten.index.Tensor and any(
                _on_device(i) and i.dtype == torch.bool for i in (args[1] or []) if i is not None):
            self._record('data_dependent', func)
        elif func is aten.repeat_interleave.Tensor and _on_device(args[0]) and \
                kwargs.get('output_size') is None:
            self._record('data_dependent', func)
        elif _mixes_host_and_device(args, kwargs):
            self._record('h2d_blocking', func)   # the op copies its host operand itself
        return func(*args, **kwargs)

    def _check_copy(self, func, args, kwargs) -> None:
        if func is aten._to_copy.default:
            src, dst_device = args[0], kwargs.get('device') or args[0].device
            non_blocking = kwargs.get('non_blocking', False)
        else:
            dst, src = args[0], args[1]
            dst_device = dst.device
            non_blocking = args[2] if len(args) > 2 else kwargs.get('non_blocking', False)
        dst_device = torch.device(dst_device)
        if _on_host(src) and dst_device.type != 'cpu':
            if not non_blocking:
                self._record('h2d_blocking', func)
            elif not _pinned(src, dst_device):
                self._record('h2d_unpinned', func)
        elif _on_device(src) and dst_device.type == 'cpu' and not non_blocking:
            self._record('read_back', func)

    def counts(self) -> dict:
        """{kind: number of events}."""
        return dict(collections.Counter(e.kind for e in self.events))

    def summary(self) -> str:
        """One line per distinct (kind, op, place) with its count."""
        c = collections.Counter(self.events)
        return '\n'.join(f'{n} x {e.kind} {e.op} at {e.where}' for e, n in c.most_common()) \
            or 'no synchronising call'

"""greenmim_mm's checkpoint format: plain data that ``torch.load(path, weights_only=True)`` reads
with no allow-list at all.

mmengine's ``Runner.save_checkpoint`` stores its message hub (``HistoryBuffer`` objects holding
numpy arrays) and whatever numpy values meta, metrics and runtime info carry; unpickling those
needs classes outside torch's weights-only set. :func:`to_plain` rewrites such values as tensors,
lists, dicts and Python scalars, tagged so that :func:`from_plain` restores the same objects:

* ``HistoryBuffer`` -> ``{TAG: 'HistoryBuffer', 'log_history': ..., 'count_history': ...,
  'max_length': int}`` (the histories as tagged arrays);
* ``numpy.ndarray`` -> ``{TAG: 'ndarray', 'dtype': str, 'shape': list, 'data': tensor}`` (a list
  instead of a tensor for dtypes torch lacks, e.g. strings);
* numpy scalar -> ``{TAG: 'numpy_scalar', 'dtype': str, 'value': Python scalar}``;
  ``numpy.dtype`` -> ``{TAG: 'numpy_dtype', 'dtype': str}``;
* other mappings (``defaultdict``, ``ConfigDict``) -> ``dict``; ``OrderedDict`` (with a state
  dict's ``_metadata``), lists, tuples, sets, tensors, ``torch.Size``/``dtype``/``device``, str,
  bytes, numbers, bool and None stay as they are.

Anything else raises :class:`PlainFormatError` naming where it sits. Checkpoints written before
this format (mmengine's pickled ``HistoryBuffer``) are read through
:mod:`greenmim_mm.checkpoint.loading`, which maps each ``HistoryBuffer`` to an inert
:class:`LegacyHistoryBuffer` record; :func:`from_plain` turns those into real ones too.
"""
import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import torch

from .numpy_values import DecodeBudget, UnsafeNumpyValue, _Path, check_plain_dtype, plain_dtype

TAG = '__greenmim_mm_plain__'
_LEAVES = (str, bytes, bool, int, float, complex, type(None), torch.dtype, torch.device,
           torch.Size)
# HistoryBuffer's statistics methods, which mmengine pickles as getattr(HistoryBuffer, name)
HISTORY_STATISTICS = ('min', 'max', 'current', 'mean')


class PlainFormatError(TypeError):
    """A value that has no plain (weights-only loadable) form; the message says where it is."""


class LegacyHistoryBuffer:
    """Inert stand-in for a pickled ``mmengine.logging.HistoryBuffer`` in an old checkpoint.

    The weights-only unpickler only fills its ``__dict__`` (``_log_history``, ``_count_history``,
    ``max_length``, ``statistics_methods``); :func:`from_plain` builds a real ``HistoryBuffer``
    from the two arrays and ``max_length`` and drops the rest.
    """


# ---------------------------------------------------------------------------- writing
def to_plain(obj: Any, where: Any = 'checkpoint', memo: Optional[dict] = None) -> Any:
    """``obj`` with every non-plain value replaced by its tagged plain form (new containers; the
    input is not modified). A value met twice (shared references, e.g. a message hub's list held
    in two places) is converted once and stays shared, so the work and the output are linear in
    the object graph, not in its expanded tree. Raises :class:`PlainFormatError` for a value with
    no plain form or a reference cycle."""
    if isinstance(obj, torch.Tensor) or type(obj) in _LEAVES:
        return obj
    memo = {} if memo is None else memo
    if id(obj) in memo:
        if memo[id(obj)][1] is _IN_PROGRESS:
            raise PlainFormatError(f'{where}: a reference cycle through a {type(obj).__name__} '
                                   'cannot be stored in a plain checkpoint')
        return memo[id(obj)][1]
    memo[id(obj)] = (obj, _IN_PROGRESS)  # keep obj alive so its id is not reused
    out = _one_to_plain(obj, where, memo)
    memo[id(obj)] = (obj, out)
    return out


_IN_PROGRESS = object()


def _one_to_plain(obj: Any, where: Any, memo: dict) -> Any:
    from mmengine.logging import HistoryBuffer
    if isinstance(obj, HistoryBuffer):
        log, count = obj.data
        return {TAG: 'HistoryBuffer', 'log_history': _array_to_plain(log, where),
                'count_history': _array_to_plain(count, where), 'max_length': int(obj.max_length)}
    if isinstance(obj, np.ndarray):
        return _array_to_plain(obj, where)
    if isinstance(obj, np.generic):
        _check_dtype(obj.dtype, where)
        value = obj.item()
        if type(value) not in _LEAVES:
            raise PlainFormatError(f'{where}: numpy {obj.dtype} value {obj!r} has no plain form')
        return {TAG: 'numpy_scalar', 'dtype': obj.dtype.str, 'value': value}
    if isinstance(obj, np.dtype):
        _check_dtype(obj, where)
        return {TAG: 'numpy_dtype', 'dtype': obj.str}
    if isinstance(obj, Mapping):
        return _mapping_to_plain(obj, where, memo)
    if type(obj) in (list, tuple, set):
        return type(obj)(to_plain(v, _Path(where, 'index', i), memo) for i, v in enumerate(obj))
    raise PlainFormatError(
        f'{where}: a {type(obj).__module__}.{type(obj).__qualname__} cannot be stored in a '
        'weights-only checkpoint (allowed: tensors, numbers, str, bytes, None, lists, tuples, '
        'dicts, numpy arrays and scalars, mmengine HistoryBuffer)')


def _mapping_to_plain(obj: Mapping, where: Any, memo: dict) -> dict:
    bad = [k for k in obj if type(k) not in _LEAVES]
    if bad:
        raise PlainFormatError(f'{where}: keys must be str or numbers, got {bad[0]!r} '
                               f'({type(bad[0]).__name__})')
    out = OrderedDict() if isinstance(obj, OrderedDict) else {}
    for key, value in obj.items():
        out[key] = to_plain(value, _Path(where, 'item', key), memo)
    metadata = getattr(obj, '_metadata', None)  # a module state dict's version info
    if isinstance(out, OrderedDict) and metadata is not None:
        out._metadata = to_plain(metadata, _Path(where, 'attr', '._metadata'), memo)
    return out


def _check_dtype(dtype: np.dtype, where: str) -> None:
    try:
        check_plain_dtype(dtype, where)
    except UnsafeNumpyValue as err:  # the loader would refuse it
        raise PlainFormatError(f'{err}; it has no plain form') from None


def _array_to_plain(arr: np.ndarray, where: str) -> dict:
    if arr.dtype.hasobject:
        raise PlainFormatError(f'{where}: numpy object arrays have no plain form')
    _check_dtype(arr.dtype, where)
    try:
        data = torch.from_numpy(np.ascontiguousarray(arr)).clone()
    except (TypeError, ValueError):  # a dtype torch lacks (strings, other byte order, ...)
        data = arr.tolist()
    return {TAG: 'ndarray', 'dtype': arr.dtype.str, 'shape': list(arr.shape), 'data': data}


# ---------------------------------------------------------------------------- reading
def from_plain(obj: Any, memo: Optional[dict] = None, budget: Any = None) -> Any:
    """Restore what :func:`to_plain` wrote (and :class:`LegacyHistoryBuffer` records) as the
    original objects; everything else is returned as is. A container met twice (shared
    references in the pickle) is restored once, so the work is linear in the file's size, not in
    its expanded size; the numpy values made are charged to ``budget`` (a
    :class:`~greenmim_mm.checkpoint.numpy_values.DecodeBudget`; none: unbounded). Raises ``ValueError``
    on a malformed tagged value, ``UnsafeValue`` past the budget."""
    return _Restorer(memo, budget or DecodeBudget()).restore(obj)


class _Restorer:
    def __init__(self, memo: Optional[dict], budget: Any):
        self.memo, self.budget = ({} if memo is None else memo), budget

    def restore(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor) or type(obj) in _LEAVES:
            return obj
        if id(obj) in self.memo:
            return self.memo[id(obj)][1]
        out = self.restore_one(obj)
        self.memo[id(obj)] = (obj, out)  # keep obj alive so its id is not reused
        return out

    def restore_one(self, obj: Any) -> Any:
        if isinstance(obj, LegacyHistoryBuffer):
            state = vars(obj)
            return _history_buffer(state.get('_log_history'), state.get('_count_history'),
                                   state.get('max_length', 1000000))
        if isinstance(obj, dict) and TAG in obj:
            return self.tagged(obj)
        if isinstance(obj, dict):
            out = OrderedDict() if isinstance(obj, OrderedDict) else {}
            for key, value in obj.items():
                out[key] = self.restore(value)
            if isinstance(obj, OrderedDict) and hasattr(obj, '_metadata'):
                out._metadata = self.restore(obj._metadata)
            return out
        if type(obj) in (list, tuple, set):
            return type(obj)(self.restore(v) for v in obj)
        return obj

    def tagged(self, obj: dict) -> Any:
        kind = obj[TAG]
        if kind == 'HistoryBuffer':
            return _history_buffer(self.restore(obj['log_history']),
                                   self.restore(obj['count_history']), obj['max_length'])
        if kind == 'ndarray':
            return self.array(obj)
        if kind == 'numpy_scalar':
            dtype = plain_dtype(obj['dtype'], 'a tagged numpy scalar')
            value = obj['value']
            if type(value) not in _VALUE_TYPES[dtype.kind]:
                raise ValueError(f'a tagged numpy {dtype.str} scalar holds a '
                                 f'{type(value).__name__}')
            self.budget.charge('numpy', dtype.itemsize, 'checkpoint',
                               f'a tagged numpy {dtype.str} scalar')
            return dtype.type(value)
        if kind == 'numpy_dtype':
            return plain_dtype(obj['dtype'], 'a tagged numpy dtype')
        raise ValueError(f'unknown tagged value {_short_repr(kind)} in a greenmim_mm checkpoint')

    def array(self, obj: dict) -> np.ndarray:
        """A tagged ndarray: its values counted (shared sub-lists once, leaves of the dtype's
        Python type), then its bytes charged to the budget before numpy allocates them."""
        data, shape = obj['data'], obj['shape']
        dtype = plain_dtype(obj['dtype'], 'a tagged ndarray')
        if not (isinstance(shape, list) and all(type(n) is int and 0 <= n < 2**40
                                                for n in shape)):
            raise ValueError(f'a tagged ndarray has shape {_short_repr(shape)}')
        size = math.prod(shape)
        if isinstance(data, torch.Tensor):
            count = data.numel()
        elif isinstance(data, list):
            count = _count_leaves(data, len(shape), _VALUE_TYPES[dtype.kind], {})
        else:
            raise ValueError(f'a tagged ndarray holds a {type(data).__name__}')
        if count != size:
            raise ValueError(f'a tagged ndarray of shape {shape} holds {count} values')
        self.budget.charge('numpy', size * dtype.itemsize, 'checkpoint',
                           f'a tagged ndarray {dtype.str}{shape}')
        if isinstance(data, torch.Tensor):
            arr = data.detach().cpu().numpy().astype(dtype, copy=True)
        else:
            arr = np.array(data, dtype=dtype)
        return arr.reshape(shape)


# the Python values to_plain writes for each numpy kind (ndarray.item() / .tolist())
_VALUE_TYPES = {'b': (bool, ), 'i': (int, bool), 'u': (int, bool), 'f': (float, int, bool),
                'c': (complex, float, int, bool), 'S': (bytes, ), 'U': (str, )}


def _short_repr(value: Any) -> str:
    text = repr(value) if isinstance(value, (str, int, float, bool)) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + '...'


def _count_leaves(data: Any, depth: int, types: tuple, memo: dict) -> int:
    """How many values a nested list ``depth`` levels deep holds (a sub-list met twice is
    counted from the memo); raises ``ValueError`` for a leaf not of ``types``."""
    if depth == 0:
        if type(data) not in types:
            raise ValueError(f'a tagged ndarray holds a {type(data).__name__} where a '
                             f'{types[0].__name__} belongs')
        return 1
    if type(data) is not list:
        raise ValueError(f'a tagged ndarray holds a {type(data).__name__} where a list belongs')
    if id(data) not in memo:
        memo[id(data)] = (data, sum(_count_leaves(v, depth - 1, types, memo) for v in data))
    return memo[id(data)][1]


def _history_buffer(log_history, count_history, max_length):
    from mmengine.logging import HistoryBuffer
    if not (isinstance(log_history, np.ndarray) and isinstance(count_history, np.ndarray)
            and log_history.dtype.kind in 'biuf' and count_history.dtype.kind in 'biuf'):
        raise ValueError('a HistoryBuffer in the checkpoint does not hold two numeric arrays')
    if type(max_length) is not int:
        raise ValueError('a HistoryBuffer in the checkpoint has max_length '
                         f'{_short_repr(max_length)}')
    return HistoryBuffer(log_history, count_history, max_length=int(max_length))

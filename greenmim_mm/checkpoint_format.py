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
:mod:`greenmim_mm.checkpoint_loading`, which maps each ``HistoryBuffer`` to an inert
:class:`LegacyHistoryBuffer` record; :func:`from_plain` turns those into real ones too.
"""
import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Callable, Optional

import numpy as np
import torch

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
def to_plain(obj: Any, where: str = 'checkpoint') -> Any:
    """``obj`` with every non-plain value replaced by its tagged plain form (new containers; the
    input is not modified). Raises :class:`PlainFormatError` for a value with no plain form."""
    from mmengine.logging import HistoryBuffer
    if isinstance(obj, torch.Tensor) or type(obj) in _LEAVES:
        return obj
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
        return _mapping_to_plain(obj, where)
    if type(obj) in (list, tuple, set):
        return type(obj)(to_plain(v, f'{where}[{i}]') for i, v in enumerate(obj))
    raise PlainFormatError(
        f'{where}: a {type(obj).__module__}.{type(obj).__qualname__} cannot be stored in a '
        'weights-only checkpoint (allowed: tensors, numbers, str, bytes, None, lists, tuples, '
        'dicts, numpy arrays and scalars, mmengine HistoryBuffer)')


def _mapping_to_plain(obj: Mapping, where: str) -> dict:
    bad = [k for k in obj if type(k) not in _LEAVES]
    if bad:
        raise PlainFormatError(f'{where}: keys must be str or numbers, got {bad[0]!r} '
                               f'({type(bad[0]).__name__})')
    out = OrderedDict() if isinstance(obj, OrderedDict) else {}
    for key, value in obj.items():
        out[key] = to_plain(value, f'{where}[{key!r}]')
    metadata = getattr(obj, '_metadata', None)  # a module state dict's version info
    if isinstance(out, OrderedDict) and metadata is not None:
        out._metadata = to_plain(metadata, f'{where}._metadata')
    return out


def _check_dtype(dtype: np.dtype, where: str) -> None:
    from .checkpoint_numpy import UnsafeNumpyValue, check_plain_dtype
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
def from_plain(obj: Any, memo: Optional[dict] = None) -> Any:
    """Restore what :func:`to_plain` wrote (and :class:`LegacyHistoryBuffer` records) as the
    original objects; everything else is returned as is. Raises ``ValueError`` on a malformed
    tagged value. A container met twice (shared references in the pickle) is restored once, so
    the work is linear in the file's size, not in its expanded size."""
    if isinstance(obj, torch.Tensor) or type(obj) in _LEAVES:
        return obj
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)][1]
    out = _restore_one(obj, memo)
    memo[id(obj)] = (obj, out)  # keep obj alive so its id is not reused
    return out


def _restore_one(obj: Any, memo: dict) -> Any:
    if isinstance(obj, LegacyHistoryBuffer):
        return _history_buffer(vars(obj).get('_log_history'), vars(obj).get('_count_history'),
                               vars(obj).get('max_length', 1000000))
    if isinstance(obj, dict) and TAG in obj:
        return _tagged(obj, memo)
    if isinstance(obj, dict):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for key, value in obj.items():
            out[key] = from_plain(value, memo)
        if isinstance(obj, OrderedDict) and hasattr(obj, '_metadata'):
            out._metadata = from_plain(obj._metadata, memo)
        return out
    if type(obj) in (list, tuple, set):
        return type(obj)(from_plain(v, memo) for v in obj)
    return obj


# A tagged array may be at most this much larger than the data the file holds for it (a tiny
# file must not ask for gigabytes, e.g. 1000 empty strings as dtype '<U999999').
_MAX_EXPANSION, _MIN_BUDGET = 64, 1 << 20


def _leaves(data: Any, depth: int, memo: dict) -> tuple:
    """(count, bytes) of the leaves of a nested list ``depth`` levels deep (memoised by id)."""
    if depth == 0 or not isinstance(data, list):
        return 1, len(data) if isinstance(data, (str, bytes)) else 8
    if id(data) not in memo:
        counts = [_leaves(v, depth - 1, memo) for v in data]
        memo[id(data)] = (data, sum(c for c, _ in counts), sum(b for _, b in counts))
    return memo[id(data)][1:]


def _tagged_array(obj: dict, memo: dict) -> np.ndarray:
    from .checkpoint_numpy import plain_dtype
    data, dtype, shape = obj['data'], plain_dtype(obj['dtype'], 'a tagged ndarray'), obj['shape']
    if not (isinstance(shape, list) and all(type(n) is int and 0 <= n < 2**40 for n in shape)):
        raise ValueError(f'a tagged ndarray has shape {shape!r}')
    size = math.prod(shape)
    if isinstance(data, torch.Tensor):
        count, nbytes = data.numel(), data.numel() * data.element_size()
    elif isinstance(data, list):
        count, nbytes = _leaves(data, len(shape), {}) if shape else (1, 8)
    else:
        raise ValueError(f'a tagged ndarray holds a {type(data).__name__}')
    if count != size:
        raise ValueError(f'a tagged ndarray of shape {shape} holds {count} values')
    if size * dtype.itemsize > max(_MIN_BUDGET, _MAX_EXPANSION * nbytes):
        raise ValueError(f'a tagged ndarray {dtype.str}{shape} would take {size * dtype.itemsize} '
                         f'bytes from {nbytes} bytes of data')
    if isinstance(data, torch.Tensor):
        arr = data.numpy().astype(dtype, copy=True)
    else:
        arr = np.array(data, dtype=dtype)
    return arr.reshape(shape)


def _tagged(obj: dict, memo: dict) -> Any:
    from .checkpoint_numpy import plain_dtype
    kind = obj[TAG]
    if kind == 'HistoryBuffer':
        return _history_buffer(from_plain(obj['log_history'], memo),
                               from_plain(obj['count_history'], memo), obj['max_length'])
    if kind == 'ndarray':
        return _tagged_array(obj, memo)
    if kind == 'numpy_scalar':
        return plain_dtype(obj['dtype'], 'a tagged numpy scalar').type(obj['value'])
    if kind == 'numpy_dtype':
        return plain_dtype(obj['dtype'], 'a tagged numpy dtype')
    raise ValueError(f'unknown tagged value {kind!r} in a greenmim_mm checkpoint')


def _history_buffer(log_history, count_history, max_length):
    from mmengine.logging import HistoryBuffer
    if not (isinstance(log_history, np.ndarray) and isinstance(count_history, np.ndarray)
            and log_history.dtype.kind in 'biuf' and count_history.dtype.kind in 'biuf'):
        raise ValueError('a HistoryBuffer in the checkpoint does not hold two numeric arrays')
    return HistoryBuffer(log_history, count_history, max_length=int(max_length))


# ---------------------------------------------------------------------------- upgrading
def upgrade_trusted_file(in_path: str, out_path: str,
                         before_unpickling: Callable[[], None] = lambda: None) -> bool:
    """Rewrite the checkpoint ``in_path`` in the plain format to ``out_path`` (atomically).

    A file the safe loader reads (:func:`greenmim_mm.checkpoint_loading.load_checkpoint_file`) is
    rewritten from what it returns, running nothing from the file. Otherwise
    ``before_unpickling()`` is called (the tool prints its warning) and ``in_path`` is
    **unpickled with ``weights_only=False``: it runs whatever code the file holds.** Only for
    files you produced yourself. Returns whether that unsafe unpickling happened.

    Raises ``ValueError`` when ``out_path`` is ``in_path`` (same file, any spelling),
    :class:`PlainFormatError` when a value has no plain form, whatever loading raises; the result
    is checked to load with plain ``torch.load(weights_only=True)`` before it is written.
    """
    import io

    from .checkpoint_loading import UnsafeCheckpointError, load_checkpoint_file
    from .fileio import atomic_write_bytes, is_same_file
    if is_same_file(in_path, out_path):
        raise ValueError(f'output {out_path} is the input file {in_path}; choose another path')
    try:
        checkpoint, unsafe = load_checkpoint_file(in_path, map_location='cpu'), False
    except UnsafeCheckpointError:
        before_unpickling()
        checkpoint = torch.load(in_path, map_location='cpu', weights_only=False)
        unsafe = True
    buffer = io.BytesIO()
    torch.save(to_plain(checkpoint), buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)  # the point of the format: no allow-list needed
    atomic_write_bytes(out_path, buffer.getbuffer())
    return unsafe

"""numpy values in checkpoints, rebuilt without letting the file drive numpy.

A pickled numpy value is ``numpy.dtype(spec, align, copy)`` followed by a BUILD whose state
numpy's ``dtype.__setstate__`` applies as is: fields, offsets, item size and flags. A file can so
build a structured dtype whose object field overlaps an int field while ``hasobject`` is False;
reading such an array dereferences whatever pointer the file wrote (a segfault or worse). torch's
weights-only unpickler calls ``__setstate__`` on any allow-listed type, so allow-listing
``numpy.dtype`` (and its ``numpy.dtypes.*DType`` classes) hands numpy the file's state.

Here no numpy object is created while unpickling. The numpy globals map to inert records
(:class:`DtypeRecord` for ``numpy.dtype``, :class:`ArrayRecord` for ``_reconstruct``,
:class:`ScalarRecord` for ``scalar``, :class:`NdarrayName` for ``numpy.ndarray``) that only
store their arguments and state. :func:`restore_numpy` then rebuilds each value from a canonical
dtype (``numpy.dtype('<f8')``...) and the raw bytes, after checking the recorded state describes
exactly that dtype, and refuses anything else with :class:`UnsafeNumpyValue` naming where it sits.

Plain dtypes only (:func:`check_plain_dtype`): kinds bool, signed/unsigned int, float, complex
(``b i u f c``) and fixed-width bytes/str (``S U``: characters stored inline, no pointers; mmcv-era
meta holds class-name arrays), any byte order; never object, void/structured, subarray, datetime or
numpy 2's variable-width ``StringDType`` (which holds pointers).
"""
import math
import pickle
import re
from typing import Any, Optional

import numpy as np
import torch

PLAIN_KINDS = 'biufcSU'
_SPEC = re.compile(r'^[<>|=]?[biufcSU][1-9][0-9]{0,5}$')  # 'f8', '<U3', '|b1', '>i4'
_BYTE_ORDERS = ('<', '>', '|', '=')


class UnsafeValue(ValueError):
    """A value in a checkpoint that could crash the process, read memory it does not own or take
    unbounded memory; the message says where it is (``checkpoint['meta']['epoch']``) and why."""


class UnsafeNumpyValue(UnsafeValue):
    """A numpy value in a checkpoint that is not a plain array/scalar/dtype."""


class UnsafeTensor(UnsafeValue):
    """A tensor that is not dense and strided, or whose size, strides and offset reach outside
    its storage, or that is larger than its storage (an expanded view)."""


class DecodeBudget:
    """Bytes that rebuilding one file's values may still allocate: ``numpy`` for numpy arrays
    and scalars (ours and tagged ones, :mod:`greenmim_mm.checkpoint.plain_format`), ``tensors`` for the
    elements of its distinct tensors (views can describe more elements than their storage)."""

    def __init__(self, numpy_bytes: float = math.inf, tensor_bytes: float = math.inf):
        self.left = {'numpy': numpy_bytes, 'tensors': tensor_bytes}

    @classmethod
    def for_file(cls, size: int) -> 'DecodeBudget':
        """The bound stated in docs/checkpoints.md: numpy values at most 16 MiB + 4x the file's
        size in all; tensors at most 1 MiB + 2x the file's size in all."""
        return cls(NUMPY_BUDGET_BASE + NUMPY_BUDGET_FACTOR * size,
                   TENSOR_BUDGET_BASE + TENSOR_BUDGET_FACTOR * size)

    def charge(self, kind: str, nbytes: int, where: Any, what: str) -> None:
        """Take ``nbytes`` for ``what`` at ``where`` (formatted only for the error) from
        ``kind``'s budget, or raise :class:`UnsafeValue` before anything is allocated."""
        if nbytes > self.left[kind]:
            raise UnsafeValue(f'{where}: {what} would take {nbytes} bytes, more than the '
                              f'{self.left[kind]} bytes left of the file\'s {kind} budget '
                              '(see docs/checkpoints.md, "Loading safety")')
        self.left[kind] -= nbytes


NUMPY_BUDGET_BASE, NUMPY_BUDGET_FACTOR = 16 << 20, 4
TENSOR_BUDGET_BASE, TENSOR_BUDGET_FACTOR = 1 << 20, 2


class _Record:
    """Stores the arguments it is called with and the state BUILD gives it; nothing else."""

    def __init__(self, *args):
        self.args = args
        self.state = None

    def __setstate__(self, state):
        self.state = state


class DtypeRecord(_Record):
    """``numpy.dtype(spec, align, copy)`` and its pickled state."""


class ArrayRecord(_Record):
    """``numpy._core.multiarray._reconstruct(ndarray, (0,), b'b')`` and its pickled state
    ``(version, shape, dtype, is_fortran, raw bytes)``."""


class ScalarRecord(_Record):
    """``numpy._core.multiarray.scalar(dtype, raw bytes)``."""


class NdarrayName(_Record):
    """Stands for the ``numpy.ndarray`` global (only ever an argument of ``_reconstruct``)."""


def empty_bytes(*args) -> bytes:
    """``bytes()`` -- how pickle protocol 2 writes the raw data of an empty array. Any argument
    (``bytes(10**12)`` would allocate) is refused."""
    if args:
        raise pickle.UnpicklingError('builtins.bytes(...) with arguments is not allowed')
    return b''


def pickle_globals() -> list:
    """``(record, pickled name)`` pairs for ``torch.serialization.safe_globals``, under numpy 2
    (``numpy._core``) and numpy 1 (``numpy.core``) names, and :func:`empty_bytes`."""
    found = [(DtypeRecord, 'numpy.dtype'), (NdarrayName, 'numpy.ndarray'),
             (empty_bytes, 'builtins.bytes')]
    for core in ('numpy._core', 'numpy.core'):
        found += [(ArrayRecord, f'{core}.multiarray._reconstruct'),
                  (ScalarRecord, f'{core}.multiarray.scalar')]
    return found


# ---------------------------------------------------------------------------- checking
def check_plain_dtype(dtype: Any, where: str) -> np.dtype:
    """Return ``dtype`` if it is a plain dtype equal to its canonical ``np.dtype(dtype.str)`` in
    kind, item size, alignment, flags and byte order (no fields, subarray, object or metadata);
    raise :class:`UnsafeNumpyValue` otherwise. Reads no element data."""
    if not isinstance(dtype, np.dtype):
        raise UnsafeNumpyValue(f'{where}: expected a numpy dtype, got a {type(dtype).__name__}')
    if dtype.kind not in PLAIN_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise UnsafeNumpyValue(f'{where}: numpy dtype {dtype.str!r} (kind {dtype.kind!r}) is not '
                               'a plain bool/int/float/complex/bytes/str dtype')
    canonical = np.dtype(dtype.str)
    same = (type(dtype) is type(canonical) and not dtype.hasobject and dtype.metadata is None
            and dtype.itemsize == canonical.itemsize > 0
            and dtype.alignment == canonical.alignment and dtype.flags == canonical.flags
            and dtype.byteorder == canonical.byteorder and dtype.names is None)
    if not same:
        raise UnsafeNumpyValue(f'{where}: numpy dtype {dtype.str!r} differs from the canonical '
                               'one in layout or flags')
    return dtype


def plain_dtype(spec: Any, where: str) -> np.dtype:
    """The canonical dtype for a spec string like ``'<f8'`` or ``'U3'`` (checked as above)."""
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise UnsafeNumpyValue(f'{where}: numpy dtype {spec!r} is not a plain '
                               'bool/int/float/complex/bytes/str dtype')
    return check_plain_dtype(np.dtype(spec), where)


def check_numpy_value(value: Any, where: str) -> None:
    """Raise :class:`UnsafeNumpyValue` unless ``value`` (an ndarray, numpy scalar or dtype) is
    of an exact numpy type with a plain dtype. Reads no element data."""
    if isinstance(value, np.dtype):
        check_plain_dtype(value, where)
    elif type(value) is np.ndarray:
        check_plain_dtype(value.dtype, where)
    elif isinstance(value, np.generic) and type(value) is value.dtype.type:
        check_plain_dtype(value.dtype, where)
    else:
        raise UnsafeNumpyValue(f'{where}: a {type(value).__module__}.{type(value).__qualname__} '
                               'is not a plain numpy array or scalar')


# ---------------------------------------------------------------------------- rebuilding
def _dtype(record: Any, where: str) -> np.dtype:
    if type(record) is not DtypeRecord or len(record.args) != 3:
        raise UnsafeNumpyValue(f'{where}: malformed numpy dtype')
    spec, align, _copy = record.args
    state = record.state
    if align or not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)):
        raise UnsafeNumpyValue(f'{where}: numpy dtype {spec!r} with an unexpected pickled state')
    _version, order, subarray, names, fields, itemsize, _alignment, _flags = state[:8]
    metadata = state[8] if len(state) == 9 else None
    if order not in _BYTE_ORDERS or subarray is not None or names is not None \
            or fields is not None or metadata:
        raise UnsafeNumpyValue(f'{where}: numpy dtype {spec!r} with a structured or otherwise '
                               'non-plain pickled state (fields, subarray, metadata)')
    if isinstance(spec, str) and spec[:1] not in _BYTE_ORDERS and order != '|':
        spec = order + spec
    dtype = plain_dtype(spec, where)
    if itemsize not in (-1, dtype.itemsize):
        raise UnsafeNumpyValue(f'{where}: numpy dtype {spec!r} pickled with item size '
                               f'{itemsize!r} instead of {dtype.itemsize}')
    return dtype


def _array(record: ArrayRecord, where: str, budget: DecodeBudget) -> np.ndarray:
    state = record.state
    if not (len(record.args) == 3 and record.args[0] is NdarrayName):
        raise UnsafeNumpyValue(f'{where}: malformed numpy array')
    if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
        raise UnsafeNumpyValue(f'{where}: numpy array with an unexpected pickled state')
    _version, shape, dtype, fortran, raw = state
    dtype = _dtype(dtype, where + '.dtype')
    if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
        raise UnsafeNumpyValue(f'{where}: numpy array with shape {shape!r}')
    size = math.prod(shape)  # Python ints: no int64 overflow to a small size
    if not isinstance(raw, bytes) or len(raw) != size * dtype.itemsize:
        raise UnsafeNumpyValue(f'{where}: numpy array {dtype.str}{list(shape)} needs '
                               f'{size * dtype.itemsize} bytes of data, the file holds '
                               f'{len(raw) if isinstance(raw, bytes) else type(raw).__name__}')
    budget.charge('numpy', len(raw), where, f'numpy array {dtype.str}{list(shape)}')
    flat = np.frombuffer(raw, dtype=dtype).copy()
    return flat.reshape(shape, order='F' if fortran else 'C')


def _scalar(record: ScalarRecord, where: str, budget: DecodeBudget) -> np.generic:
    if len(record.args) != 2 or record.state is not None:
        raise UnsafeNumpyValue(f'{where}: malformed numpy scalar')
    dtype = _dtype(record.args[0], where + '.dtype')
    raw = record.args[1]
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise UnsafeNumpyValue(f'{where}: numpy {dtype.str} scalar needs {dtype.itemsize} bytes '
                               'of data')
    budget.charge('numpy', len(raw), where, f'numpy {dtype.str} scalar')
    return np.frombuffer(raw, dtype=dtype)[0].copy()


def _rebuilt(record: _Record, where: str, budget: DecodeBudget) -> Any:
    if type(record) is DtypeRecord:
        return _dtype(record, where)
    if type(record) is ArrayRecord:
        return _array(record, where, budget)
    if type(record) is ScalarRecord:
        return _scalar(record, where, budget)
    raise UnsafeNumpyValue(f'{where}: numpy.ndarray used outside an array')


def check_tensor(tensor: torch.Tensor, where: str, budget: DecodeBudget) -> None:
    """Raise :class:`UnsafeTensor` unless ``tensor`` is dense and strided (not quantized, sparse
    or nested) and every element its size, strides and offset address lies inside its storage,
    and charge its elements to ``budget`` (no larger than its storage either)."""
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        raise UnsafeTensor(f'{where}: a tensor of type {type(tensor).__module__}.'
                           f'{type(tensor).__qualname__} (only torch.Tensor and Parameter)')
    if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_nested:
        raise UnsafeTensor(f'{where}: a {tensor.layout} tensor (quantized: '
                           f'{tensor.is_quantized}, nested: {tensor.is_nested}) is not a dense '
                           'tensor')
    item, nbytes = tensor.element_size(), tensor.untyped_storage().nbytes()
    size = tensor.numel() * item
    if size:
        reach = [(n - 1) * s for n, s in zip(tensor.shape, tensor.stride())]
        low = tensor.storage_offset() + sum(r for r in reach if r < 0)
        high = tensor.storage_offset() + sum(r for r in reach if r > 0)
        if low < 0 or (high + 1) * item > nbytes or size > nbytes:
            raise UnsafeTensor(
                f'{where}: a tensor of size {list(tensor.shape)}, strides {list(tensor.stride())}'
                f' and offset {tensor.storage_offset()} ({size} bytes) does not fit its storage '
                f'of {nbytes} bytes')
    budget.charge('tensors', size, where, f'a tensor of size {list(tensor.shape)}')


class _Path:
    """Where a value sits (``checkpoint['meta'][0]``), formatted only for a message: building
    the text for every value would cost the depth times the number of values."""
    __slots__ = ('parent', 'kind', 'part')

    def __init__(self, parent: Any, kind: str, part: Any):
        self.parent, self.kind, self.part = parent, kind, part

    def __add__(self, suffix: str) -> '_Path':
        return _Path(self, 'attr', suffix)

    def __str__(self) -> str:
        parts, node = [], self
        while isinstance(node, _Path):
            parts.append(node.part if node.kind == 'attr' else
                         f' key {_short(node.part)}' if node.kind == 'key' else
                         f'[{_short(node.part)}]' if node.kind == 'item' else f'[{node.part}]')
            node = node.parent
        return str(node) + ''.join(reversed(parts))

    __format__ = lambda self, spec: format(str(self), spec)  # noqa: E731


def restore_numpy(obj: Any, where: str = 'checkpoint',
                  budget: Optional[DecodeBudget] = None) -> Any:
    """``obj`` (what the weights-only unpickler returned) with every record rebuilt as a plain
    numpy value and every numpy value and tensor checked (:func:`check_numpy_value`,
    :func:`check_tensor`) within ``budget`` (none: unbounded). Lists, dicts and objects'
    ``__dict__`` are updated in place, tuples and sets rebuilt; shared and cyclic references are
    followed once. Raises :class:`UnsafeValue` naming the location."""
    return _walk(obj, where, {}, budget or DecodeBudget())


def _walk(obj: Any, where: str, memo: dict, budget: DecodeBudget) -> Any:
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, _Record):
        result = memo[id(obj)] = _rebuilt(obj, where, budget)
        return result
    if isinstance(obj, torch.Tensor):
        memo[id(obj)] = obj
        check_tensor(obj, where, budget)
        return obj
    if isinstance(obj, (np.ndarray, np.generic, np.dtype)):
        check_numpy_value(obj, where)
        return obj
    if isinstance(obj, (str, bytes, int, float, complex, type(None), torch.dtype, torch.device,
                        torch.Size)):
        return obj
    memo[id(obj)] = obj
    if type(obj) is list:
        for i, value in enumerate(obj):
            obj[i] = _walk(value, _Path(where, 'index', i), memo, budget)
    elif isinstance(obj, dict):
        items = [(_walk(k, _Path(where, 'key', k), memo, budget), v) for k, v in obj.items()]
        items = [(k, _walk(v, _Path(where, 'item', k), memo, budget)) for k, v in items]
        obj.clear()
        for key, value in items:
            obj[key] = value
    elif type(obj) in (tuple, set, frozenset):
        result = memo[id(obj)] = type(obj)(_walk(v, _Path(where, 'index', i), memo, budget)
                                           for i, v in enumerate(obj))
        return result
    if not isinstance(obj, torch.Tensor) and isinstance(getattr(obj, '__dict__', None), dict):
        attrs = vars(obj)
        for name in list(attrs):
            attrs[name] = _walk(attrs[name], where + f'.{name}', memo, budget)
    return obj


def _short(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:57] + '...'

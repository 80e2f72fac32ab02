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
from typing import Any

import numpy as np
import torch

PLAIN_KINDS = 'biufcSU'
_SPEC = re.compile(r'^[<>|=]?[biufcSU][1-9][0-9]{0,5}$')  # 'f8', '<U3', '|b1', '>i4'
_BYTE_ORDERS = ('<', '>', '|', '=')


class UnsafeNumpyValue(ValueError):
    """A numpy value in a checkpoint that is not a plain array/scalar/dtype; the message says
    where it is (``checkpoint['meta']['epoch']``) and what is wrong."""


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


def _array(record: ArrayRecord, where: str) -> np.ndarray:
    state = record.state
    if not (len(record.args) == 3 and record.args[0] is NdarrayName):
        raise UnsafeNumpyValue(f'{where}: malformed numpy array')
    if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
        raise UnsafeNumpyValue(f'{where}: numpy array with an unexpected pickled state')
    _version, shape, dtype, fortran, raw = state
    dtype = _dtype(dtype, f'{where}.dtype')
    if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
        raise UnsafeNumpyValue(f'{where}: numpy array with shape {shape!r}')
    size = math.prod(shape)  # Python ints: no int64 overflow to a small size
    if not isinstance(raw, bytes) or len(raw) != size * dtype.itemsize:
        raise UnsafeNumpyValue(f'{where}: numpy array {dtype.str}{list(shape)} needs '
                               f'{size * dtype.itemsize} bytes of data, the file holds '
                               f'{len(raw) if isinstance(raw, bytes) else type(raw).__name__}')
    flat = np.frombuffer(raw, dtype=dtype).copy()
    return flat.reshape(shape, order='F' if fortran else 'C')


def _scalar(record: ScalarRecord, where: str) -> np.generic:
    if len(record.args) != 2 or record.state is not None:
        raise UnsafeNumpyValue(f'{where}: malformed numpy scalar')
    dtype = _dtype(record.args[0], f'{where}.dtype')
    raw = record.args[1]
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise UnsafeNumpyValue(f'{where}: numpy {dtype.str} scalar needs {dtype.itemsize} bytes '
                               'of data')
    return np.frombuffer(raw, dtype=dtype)[0].copy()


def _rebuilt(record: _Record, where: str) -> Any:
    if type(record) is DtypeRecord:
        return _dtype(record, where)
    if type(record) is ArrayRecord:
        return _array(record, where)
    if type(record) is ScalarRecord:
        return _scalar(record, where)
    raise UnsafeNumpyValue(f'{where}: numpy.ndarray used outside an array')


def restore_numpy(obj: Any, where: str = 'checkpoint') -> Any:
    """``obj`` (what the weights-only unpickler returned) with every record rebuilt as a plain
    numpy value and every numpy value checked (:func:`check_numpy_value`). Lists, dicts and
    objects' ``__dict__`` are updated in place, tuples and sets rebuilt; shared and cyclic
    references are followed once. Raises :class:`UnsafeNumpyValue` naming the location."""
    return _walk(obj, where, {})


def _walk(obj: Any, where: str, memo: dict) -> Any:
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, _Record):
        result = memo[id(obj)] = _rebuilt(obj, where)
        return result
    if isinstance(obj, (np.ndarray, np.generic, np.dtype)):
        check_numpy_value(obj, where)
        return obj
    if isinstance(obj, (str, bytes, int, float, complex, type(None), torch.dtype, torch.device,
                        torch.Size)):
        return obj
    memo[id(obj)] = obj
    if type(obj) is list:
        for i, value in enumerate(obj):
            obj[i] = _walk(value, f'{where}[{i}]', memo)
    elif isinstance(obj, dict):
        items = [(_walk(k, f'{where} key {_short(k)}', memo), v) for k, v in obj.items()]
        items = [(k, _walk(v, f'{where}[{_short(k)}]', memo)) for k, v in items]
        obj.clear()
        for key, value in items:
            obj[key] = value
    elif type(obj) in (tuple, set, frozenset):
        result = memo[id(obj)] = type(obj)(_walk(v, f'{where}[{i}]', memo)
                                           for i, v in enumerate(obj))
        return result
    if not isinstance(obj, torch.Tensor) and isinstance(getattr(obj, '__dict__', None), dict):
        attrs = vars(obj)
        for name in list(attrs):
            attrs[name] = _walk(attrs[name], f'{where}.{name}', memo)
    return obj


def _short(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:57] + '...'

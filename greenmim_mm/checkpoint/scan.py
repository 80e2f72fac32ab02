"""A static check of a checkpoint file before torch's weights-only unpickler runs it.

torch's weights-only allow-list keeps values that are inert but not bounded: ``bytearray(n)``
and ``torch.Tensor(n)`` allocate ``n`` bytes from a few bytes of pickle, a deflated zip record
decodes to 1000x its size, ``torch._utils._rebuild_qtensor`` (and the sparse / nested / wrapper
rebuilds) do not bounds-check a tensor's strides against its storage, and a dict of keys with
equal hashes (ints ``k * (2**61 - 1) + c``, complex numbers) takes quadratic time to build.
:func:`scan_checkpoint` reads the archive's directory and walks the pickle's opcodes once,
without creating any object the file describes, and refuses (:class:`ScanRefusal`):

* a compressed (or duplicated) zip record: torch writes records stored, so the records a file
  decodes to are never larger than the file;
* a storage whose declared size differs from its record (zip) or storages declaring more bytes
  than the file holds (torch's legacy format);
* a call of anything but the inert constructors below, with arguments of the expected kinds:
  dense tensors only (``_rebuild_tensor``/``_v2``/``_v3``, ``_rebuild_parameter``[``_with_state``]
  and ``_rebuild_from_type_v2`` over them, whose ``set_`` torch bounds-checks), ``OrderedDict()``,
  ``Counter(dict)`` (schedulers' milestones), ``set(list)``, ``complex(x, y)``,
  ``bytearray``/``_codecs.encode`` of bytes or text in the file, ``torch.Size``,
  ``torch.device``, the numpy records and old mmengine names of
  :mod:`greenmim_mm.checkpoint.loading`;
* calls and BUILDs copying more than ``2 * len(pickle) + 4096`` items/bytes in all out of their
  arguments (a memoized value passed again and again: ``bytearray(v)`` repeated);
* a dict key or set element other than str, bytes, bool, None or an int below ``2**61 - 1`` in
  magnitude (those have distinct hashes; CPython's dict is then linear on average).

Each opcode creates at most one object and the copies are bounded, so what the unpickler builds
is linear in the pickle's size; the tensors are views of the storage records. Unknown globals are
left to torch's own message (``Unsupported global``).
"""
import io
import pickle
import pickletools
import tarfile
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from typing import Any, BinaryIO, Dict, Optional

import torch

# ints of magnitude below this hash to themselves (CPython: hash modulo the Mersenne prime 2**61-1)
_HASH_SAFE_INT = (1 << 61) - 1
_DENSE_REBUILDS = tuple(f'torch._utils.{name}' for name in (
    '_rebuild_tensor', '_rebuild_tensor_v2', '_rebuild_tensor_v3', '_rebuild_parameter',
    '_rebuild_parameter_with_state'))
_NON_DENSE = {  # torch allows these; their strides are not checked against the storage
    'torch._utils._rebuild_qtensor': 'a quantized tensor',
    'torch._utils._rebuild_sparse_tensor': 'a sparse tensor',
    'torch._utils._rebuild_nested_tensor': 'a nested tensor',
    'torch._utils._rebuild_wrapper_subclass': 'a tensor subclass without storage',
    'torch._utils._rebuild_meta_tensor_no_storage': 'a meta tensor without data',
    'torch._utils._rebuild_device_tensor_from_numpy': 'a tensor built from a numpy array',
    'torch._utils._rebuild_device_tensor_from_cpu_tensor': 'a device tensor',
    'torch.serialization._get_layout': 'a sparse tensor layout',
    # quantized storages / dtypes make quantized tensors through the dense rebuilds too
    **{f'torch.{name}Storage': 'a quantized storage'
       for name in ('QUInt8', 'QInt8', 'QInt32', 'QUInt4x2', 'QUInt2x4')},
    **{f'torch.{name}': 'a quantized dtype or scheme'
       for name in ('quint8', 'qint8', 'qint32', 'quint4x2', 'quint2x4', 'per_tensor_affine',
                    'per_tensor_symmetric', 'per_channel_affine', 'per_channel_symmetric',
                    'per_channel_affine_float_qparams')},
}
_LATIN1 = ('latin1', 'latin-1')
# the opcodes torch's weights-only unpickler implements (torch/_weights_only_unpickler.py)
_SUPPORTED = set('c\x81R b a e s u ( t \x85 \x86 \x87 N \x89 \x88 ) ] } \x8f J K M G X U Q h j '
                 'q r \x8a \x80 .'.replace(' ', ''))


class ScanRefusal(pickle.UnpicklingError):
    """A checkpoint the static scan refuses; the message says what and where (pickle offset)."""


class _Mark:
    pass


class _Global:
    def __init__(self, name: str):
        self.name = name


class _Made:
    """What a call, persistent id or empty container makes: its kind and, for lists, items."""

    def __init__(self, kind: str, name: str = '', items: Optional[list] = None, size: int = 0):
        self.kind, self.name, self.items, self.size = kind, name, items, size

    def count(self) -> int:  # items a call or BUILD copies out of it (bytes: their length)
        return len(self.items) if self.items is not None else self.size


def _copied(args: tuple) -> int:
    """How many items / bytes a call or BUILD copies out of its (top-level) arguments."""
    return sum(a.count() if isinstance(a, _Made) else len(a) for a in args
               if isinstance(a, (str, bytes, tuple, _Made)))


def _kind(value: Any) -> str:
    if isinstance(value, _Made):
        return value.name or value.kind
    if isinstance(value, _Global):
        return value.name
    return type(value).__name__


def _hash_safe(value: Any) -> bool:
    if type(value) is int:
        return -_HASH_SAFE_INT < value < _HASH_SAFE_INT
    return type(value) in (str, bytes, bool, type(None)) or (
        isinstance(value, _Made) and value.kind == 'bytes')


class _Scanner:
    """Walks one pickle's opcodes with a stack of stand-ins (:class:`_Global`, :class:`_Made`,
    literals); ``storages`` collects the declared ``key -> nbytes``."""

    def __init__(self, allowed: Dict[str, Any], getattr_check):
        self.allowed, self.getattr_check = allowed, getattr_check
        self.storages: Dict[str, int] = {}
        self.pos = 0
        self.copied, self.copy_limit = 0, 0

    def copy(self, args: tuple, what: str) -> None:
        """Count what ``what`` copies: a memo'd value called on again and again (``bytearray``
        of one string, ``set`` of one list) copies it each time, so without this count a few
        bytes per call ask for its size again."""
        self.copied += _copied(args)
        if self.copied > self.copy_limit:
            self.refuse(f'{what} copies {self.copied} items/bytes in all, more than the '
                        f'{self.copy_limit} the pickle data can hold once each (a memoized value '
                        'copied again and again)')

    def refuse(self, text: str):
        raise ScanRefusal(f'{text} (pickle offset {self.pos})')

    def scan(self, stream: BinaryIO) -> None:
        stack, metastack, memo = [], [], {}
        for op, arg, pos in pickletools.genops(stream):  # ValueError: not a pickle
            self.pos = pos
            code = op.code
            if code not in _SUPPORTED:
                raise pickle.UnpicklingError(f'Unsupported operand {ord(code)}')
            if code == '(':
                metastack.append(stack)
                stack = []
            elif code in 'te':  # TUPLE, APPENDS
                items, stack = stack, metastack.pop()
                if code == 't':
                    stack.append(tuple(items))
                else:
                    self.extend(stack[-1], items)
            elif code == 'u':  # SETITEMS
                items, stack = stack, metastack.pop()
                self.set_items(stack[-1], items)
            elif code == '.':
                return
            else:
                self.step(code, arg, stack, memo)
        raise pickle.UnpicklingError('pickle data was truncated')

    def step(self, code: str, arg: Any, stack: list, memo: dict) -> None:
        if code == 'c':
            stack.append(self.global_(arg))
        elif code == 'R':
            args = stack.pop()
            stack[-1] = self.call(stack[-1], args)
        elif code == '\x81':  # NEWOBJ
            args = stack.pop()
            stack[-1] = self.new(stack[-1], args)
        elif code == 'b':
            self.build(stack.pop(), stack[-1])
        elif code == 'a':
            item = stack.pop()
            self.extend(stack[-1], [item])
        elif code == 's':
            value, key = stack.pop(), stack.pop()
            self.set_items(stack[-1], [key, value])
        elif code in '\x85\x86\x87':  # TUPLE1..3
            n = ord(code) - 0x84
            stack[-n:] = [tuple(stack[-n:])]
        elif code in ']}\x8f':
            kind = {']': 'list', '}': 'dict', '\x8f': 'set'}[code]
            stack.append(_Made(kind, items=[] if kind == 'list' else None))
        elif code in 'hj':  # BINGET
            if arg not in memo:
                self.refuse(f'memo entry {arg} used before it is set')
            stack.append(memo[arg])
        elif code in 'qr':  # BINPUT
            memo[arg] = stack[-1]
        elif code == 'Q':  # BINPERSID
            stack.append(self.storage(stack.pop()))
        elif code != '\x80':  # literals: None, bools, (), ints, floats, strings
            stack.append({'N': None, '\x89': False, '\x88': True, ')': ()}.get(code, arg))

    def global_(self, arg: str) -> _Global:
        module, name = arg.split(' ', 1)
        if (module, name) in NAME_MAPPING:
            module, name = NAME_MAPPING[(module, name)]
        module = IMPORT_MAPPING.get(module, module)
        full = f'{module}.{name}'
        if full in _NON_DENSE:
            self.refuse(f'it pickles {full} ({_NON_DENSE[full]}): greenmim_mm reads dense '
                        'tensors only, whose sizes and strides torch checks against their '
                        'storage')
        if full not in self.allowed:
            raise pickle.UnpicklingError(f'Unsupported global: GLOBAL {full} was not an '
                                         'allowed global')
        return _Global(full)

    def call(self, func: Any, args: Any) -> _Made:
        if not isinstance(func, _Global):
            self.refuse(f'its pickle data calls a {_kind(func)} value, not a function')
        name = func.name
        if not isinstance(args, tuple):
            self.refuse(f'{name} is called with a {_kind(args)} instead of an argument tuple')
        check = _CALLS.get(name)
        if check is None:
            self.refuse(f'it calls {name}, which greenmim_mm does not call when loading')
        if name == 'builtins.getattr':
            if len(args) != 2:
                self.refuse(f'builtins.getattr with {len(args)} arguments')
            self.getattr_check(*args)
            return args[1]
        if not check(self, args):
            shown = ', '.join(_kind(a) for a in args)
            self.refuse(f'it calls {name}({shown}), which is not an inert value of that type')
        self.copy(args, name)
        # what it copied, it holds: Counter(Counter(d)) copies d's entries again
        return _Made(_RESULT_KIND.get(name, 'object'), name, size=_copied(args))

    def new(self, cls: Any, args: Any) -> _Made:
        name = cls.name if isinstance(cls, _Global) else _kind(cls)
        if name not in _NEW_OK or args != ():
            self.refuse(f'it creates a {name} from arguments {_kind(args)}; only '
                        f'{", ".join(sorted(_NEW_OK))} are created (without arguments)')
        return _Made('object', name)

    def build(self, state: Any, target: Any) -> None:
        if not (isinstance(target, _Made) and target.kind in ('tensor', 'dict', 'object')):
            self.refuse(f'it sets the state of an object of type {_kind(target)} (pickle BUILD)')
        # the state's own items (OrderedDict: its entries); numpy's raw bytes inside a state
        # tuple are counted by the loader's DecodeBudget
        self.copy((state, ), f'the state of {_kind(target)}')

    def extend(self, target: Any, items: list) -> None:
        if not (isinstance(target, _Made) and target.kind == 'list'):
            self.refuse(f'it appends to a {_kind(target)}, not a list')
        target.items.extend(items)

    def set_items(self, target: Any, items: list) -> None:
        if not (isinstance(target, _Made) and target.kind == 'dict'):
            self.refuse(f'it sets items of a {_kind(target)}, not a dict')
        for key in items[::2]:
            self.check_key(key, 'dict key')
        target.size += len(items) // 2

    def check_key(self, key: Any, what: str) -> None:
        if not _hash_safe(key):
            self.refuse(f'a {what} of type {_kind(key)}{_short(key)}: only str, bytes, bool, '
                        f'None and ints of magnitude below 2**61-1 are allowed (other keys can '
                        'share one hash, which makes loading take quadratic time)')

    def storage(self, pid: Any) -> _Made:
        """torch's ``('storage', type, key, location, numel[, view])`` (view: legacy files)."""
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == 'storage'
                and isinstance(pid[1], _Global) and type(pid[2]) is str
                and type(pid[3]) is str and type(pid[4]) is int and pid[4] >= 0
                and (len(pid) == 5 or pid[5] is None)):
            self.refuse(f'a persistent id of kind {_kind(pid)} that is not a whole storage')
        nbytes = pid[4] * _element_size(self.allowed.get(pid[1].name))
        if self.storages.setdefault(pid[2], nbytes) != nbytes:
            self.refuse(f'storage {pid[2]!r} is declared with two sizes')
        return _Made('storage')


def _short(value: Any) -> str:
    if isinstance(value, (int, float, complex, str, bytes)):
        text = repr(value)
        return f' ({text[:40]}...)' if len(text) > 40 else f' ({text})'
    return ''


def _element_size(storage_type: Any) -> int:
    if storage_type is torch.UntypedStorage:
        return 1
    dtype = getattr(storage_type, 'dtype', None)
    if not isinstance(dtype, torch.dtype):
        raise ScanRefusal(f'a storage of type {storage_type!r}')
    return torch._utils._element_size(dtype)


def _ints(value: Any) -> bool:
    return isinstance(value, tuple) and all(type(n) is int for n in value)


def _rebuild_from_type(scanner: _Scanner, args: tuple) -> bool:
    return (len(args) == 4 and isinstance(args[0], _Global) and args[0].name in _DENSE_REBUILDS
            and isinstance(args[1], _Global)
            and args[1].name in ('torch.Tensor', 'torch.nn.parameter.Parameter')
            and isinstance(args[2], tuple))


def _set_of(scanner: _Scanner, args: tuple) -> bool:
    if args == ():
        return True
    if len(args) != 1 or not (isinstance(args[0], _Made) and args[0].kind == 'list'):
        return False
    for item in args[0].items:
        scanner.check_key(item, 'set element')
    return True


_CALLS = {  # name -> check(scanner, args); numpy records are checked after loading
    'collections.OrderedDict': lambda s, a: a == (),
    'collections.Counter': lambda s, a: a == () or (  # Counter(dict): its keys are checked
        len(a) == 1 and isinstance(a[0], _Made) and a[0].kind == 'dict'),
    'builtins.set': _set_of,
    'builtins.complex': lambda s, a: len(a) <= 2 and all(type(x) in (int, float) for x in a),
    'builtins.bytearray': lambda s, a: a == () or (  # bytes in the file, never a length
        len(a) == 1 and isinstance(a[0], _Made) and a[0].kind == 'bytes') or (
        len(a) == 2 and type(a[0]) is str and a[1] in _LATIN1),
    'builtins.bytes': lambda s, a: a == (),
    '_codecs.encode': lambda s, a: len(a) == 2 and type(a[0]) is str and a[1] in _LATIN1,
    'torch.Size': lambda s, a: len(a) == 1 and _ints(a[0]),
    'torch.device': lambda s, a: 1 <= len(a) <= 2 and type(a[0]) is str and all(
        type(x) is int for x in a[1:]),
    'torch._tensor._rebuild_from_type_v2': _rebuild_from_type,
    'builtins.getattr': lambda s, a: True,
    'numpy.dtype': lambda s, a: True, 'numpy._core.multiarray._reconstruct': lambda s, a: True,
    'numpy.core.multiarray._reconstruct': lambda s, a: True,
    'numpy._core.multiarray.scalar': lambda s, a: True,
    'numpy.core.multiarray.scalar': lambda s, a: True,
    **{name: lambda s, a: True for name in _DENSE_REBUILDS},
}
_RESULT_KIND = {'collections.OrderedDict': 'dict', 'collections.Counter': 'dict',
                '_codecs.encode': 'bytes', 'builtins.bytes': 'bytes',
                'torch._tensor._rebuild_from_type_v2': 'tensor',
                **{name: 'tensor' for name in _DENSE_REBUILDS}}
_NEW_OK = {'argparse.Namespace', 'mmengine.logging.history_buffer.HistoryBuffer'}


def _zip_pickle(file: BinaryIO) -> tuple:
    """(data.pkl's bytes, record sizes by storage key) of a torch zip checkpoint, after checking
    no record is compressed or duplicated."""
    with zipfile.ZipFile(file) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if len({name.lower() for name in names}) != len(names):  # torch's miniz ignores case
            raise ScanRefusal('its zip archive holds two records of the same name (ignoring '
                              'case, as torch does)')
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED:
                raise ScanRefusal(
                    f'zip record {info.filename} is compressed ({info.compress_size} bytes '
                    f'decoding to {info.file_size}); torch never compresses records, and a small '
                    'compressed file can decode to gigabytes')
        prefix = names[0].split('/', 1)[0] if names else ''
        if f'{prefix}/data.pkl' not in names:
            raise ScanRefusal('its zip archive holds no data.pkl')
        records = {info.filename[len(prefix) + 6:]: info.file_size for info in infos
                   if info.filename.startswith(f'{prefix}/data/')}
        return archive.read(f'{prefix}/data.pkl'), records


def scan_checkpoint(file: BinaryIO, size: int, allowed: Dict[str, Any], getattr_check) -> None:
    """Check the checkpoint in ``file`` (``size`` bytes, seekable; left at its start) as the
    module docstring says. ``allowed``: the global names the loader admits (torch's and its
    own); ``getattr_check(owner_name, attribute)`` raises for a refused ``getattr``.

    Raises :class:`ScanRefusal` (or ``pickle.UnpicklingError`` with torch's wording for an
    unknown global or opcode) and ``zipfile.BadZipFile`` / ``EOFError`` for a damaged file.
    """
    scanner = _Scanner(allowed, getattr_check)
    start = file.tell()
    try:
        if torch.serialization._is_zipfile(file):  # torch's test: the first record's header
            file.seek(start)
            data, records = _zip_pickle(file)
            scanner.copy_limit = 2 * len(data) + 4096
            scanner.scan(io.BytesIO(data))
            for key, nbytes in scanner.storages.items():
                if records.get(key) != nbytes:
                    raise ScanRefusal(f'storage {key!r} declares {nbytes} bytes, its record '
                                      f'holds {records.get(key)}')
            return
        file.seek(start)
        if tarfile.is_tarfile(file):  # torch tries this format first, for files on disk
            raise ScanRefusal("torch's pre-0.4 tar checkpoint format is not supported")
        file.seek(start)
        scanner.copy_limit = 2 * size + 4096
        for _ in range(5):  # magic number, protocol, sys info, the object, storage keys
            scanner.scan(file)
        declared = sum(scanner.storages.values())
        if declared > size:
            raise ScanRefusal(f'its storages declare {declared} bytes, more than the {size} '
                              'bytes of the file')
    finally:
        file.seek(start)

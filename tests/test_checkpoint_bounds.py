"""Issue 19.1 and 19.3: memory-unsafe tensors and small files that ask for gigabytes or hours.

Every crafted file of the issue is loaded in a child process (a segfault, an allocation of
gigabytes or an hour-long loop must fail the test, not kill pytest); the child reports the
refusal, the seconds spent and its peak RSS while loading (``VmHWM`` after resetting it through
``/proc/self/clear_refs``, on top of the ~0.8 GB that importing torch + greenmim_mm takes here).
"""
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
import zlib
from collections import OrderedDict

import numpy as np
import pytest
import torch

from greenmim_mm.checkpoint.plain_format import TAG, PlainFormatError, from_plain, to_plain
from greenmim_mm.checkpoint.loading import (CheckpointLoadError, UnsafeCheckpointError,
                                            load_checkpoint_file)
from greenmim_mm.checkpoint.numpy_values import DecodeBudget, UnsafeTensor, check_tensor
from test_checkpoint_hostile import Pickled
from test_checkpoint_loading import ROOT

GiB = 1 << 30
MEASURE = r'''
import json, resource, sys, time
import greenmim_mm
from greenmim_mm.checkpoint.loading import CheckpointLoadError, load_checkpoint_file

def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
out = {}
for path in sys.argv[1:]:
    before = status('VmRSS')
    open('/proc/self/clear_refs', 'w').write('5')  # VmHWM := VmRSS
    start = time.perf_counter()
    try:
        load_checkpoint_file(path)
        outcome = 'loaded'
    except CheckpointLoadError as err:
        outcome = 'refused ' + str(err)
    out[path] = {'outcome': outcome, 'seconds': time.perf_counter() - start,
                 'extra_peak': status('VmHWM') - before, 'peak': status('VmHWM')}
print(json.dumps(out))
'''


def child(*args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def measure(*paths, timeout=240):
    result = child('-c', MEASURE, *paths, timeout=timeout)
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- crafting
class _Storage:
    """Pickles as torch's persistent id of a storage: ``key`` with ``numel`` elements (the
    legacy format's id has a sixth field, the view)."""

    def __init__(self, key, numel, storage_type=torch.ByteStorage, legacy=False):
        self.pid = ('storage', storage_type, key, 'cpu', numel) + ((None, ) if legacy else ())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Storage) else None


def write_torch_zip(path, obj, records=(), deflated=()):
    """A torch zip checkpoint of ``obj`` (may hold :class:`_Storage` ids) with the storage
    ``records`` (``key -> bytes``) stored and ``deflated`` (``key -> zero bytes count``)
    compressed as a zip bomb."""
    data = io.BytesIO()
    _Pickler(data, protocol=2).dump(obj)
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as archive:
        archive.writestr('archive/data.pkl', data.getvalue())
        archive.writestr('archive/byteorder', 'little')
        for key, raw in dict(records).items():
            archive.writestr(f'archive/data/{key}', raw)
        for key, zeros in dict(deflated).items():
            info = zipfile.ZipInfo(f'archive/data/{key}')
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, 'w', force_zip64=True) as record:
                chunk = bytes(1 << 24)
                for _ in range(zeros >> 24):
                    record.write(chunk)
        archive.writestr('archive/version', '3\n')


def dense(storage, size, stride):
    return Pickled(torch._utils._rebuild_tensor_v2,
                   (storage, 0, size, stride, False, OrderedDict()))


def quantized_tensor(stride):
    """The issue's quantized tensor: 32 values (a 32-byte quint8 storage) whose stride reaches
    past the storage; torch's ``_rebuild_qtensor`` does not check it."""
    q = torch.quantize_per_tensor(torch.arange(32.), 1.0, 0, torch.quint8)
    func, args = q.__reduce_ex__(2)
    args = list(args)
    args[2], args[3] = (32, ), (stride, )
    return Pickled(func, tuple(args))


def shared_nested(depth):
    nested = []
    for _ in range(depth):
        nested = [nested, nested]
    return nested


# ---------------------------------------------------------------------------- real files
@pytest.mark.parametrize('zipped', [True, False])
def test_what_torch_and_mmengine_write_still_loads(tmp_path, zipped):
    """The scan admits what real checkpoints hold: parameters, views, tensors with attributes,
    optimizer and scheduler states (MultiStepLR's milestones are a Counter), sets, complex,
    bytes, bytearray, numpy values, a plain-format message hub; zip and legacy format."""
    from mmengine.logging import MessageHub
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[3, 5])
    tagged = torch.ones(2)
    tagged.note = 'kept'
    base = torch.arange(12.).reshape(3, 4)
    hub = MessageHub.get_instance('i19a_real')
    hub.update_scalar('train/loss', 0.25)
    hub.update_info('epoch', 3)
    checkpoint = {'state_dict': model.state_dict(), 'optimizer': optimizer.state_dict(),
                  'param_schedulers': [scheduler.state_dict()], 'p': torch.nn.Parameter(base),
                  'views': [base[1], base[:, 2], base.t()], 'tagged': tagged,
                  'meta': {'seed': np.int64(5), 'mean': np.array([0.5]), 'flags': {1, 2},
                           'c': 1 + 2j, 'b': b'\x00\xff', 'ba': bytearray(b'ab'), 'n': None},
                  'message_hub': to_plain(hub.state_dict())}
    path = tmp_path / 'real.pth'
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zipped)
    loaded = load_checkpoint_file(str(path))
    assert loaded['param_schedulers'][0]['milestones'] == scheduler.state_dict()['milestones']
    assert loaded['optimizer']['state'][0]['momentum_buffer'].shape == (2, 3)
    for got, want in zip(loaded['views'], checkpoint['views']):
        assert torch.equal(got, want) and got.stride() == want.stride()
    assert loaded['views'][0].untyped_storage().data_ptr() == \
        loaded['p'].untyped_storage().data_ptr()
    assert loaded['tagged'].note == 'kept' and type(loaded['p']) is torch.nn.Parameter
    assert loaded['meta'] == {**checkpoint['meta'], 'mean': loaded['meta']['mean']}
    assert loaded['message_hub']['log_scalars']['train/loss'].current() == 0.25


# ---------------------------------------------------------------------------- 19.1
@pytest.mark.parametrize('stride', [2, 1 << 40])
def test_converter_refuses_the_quantized_tensor_past_its_storage(tmp_path, stride):
    """The issue: a real backbone checkpoint with one quantized weight whose stride passes its
    32-byte storage. ``convert_checkpoint.py --src greenmim_mm q.pth out.pth`` segfaulted
    (stride 2**40, rc 139) or wrote its own heap bytes into out.pth (stride 2, rc 0)."""
    from greenmim_mm.models import GreenSwinTransformer
    backbone = GreenSwinTransformer(arch=dict(embed_dims=16, depths=[1, 1], num_heads=[1, 2]),
                                    img_size=32, window_size=4, out_indices=(1, ))
    state_dict = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    state_dict['backbone.norm1.weight'] = quantized_tensor(stride)
    src, out = tmp_path / 'q.pth', tmp_path / 'out.pth'
    torch.save({'state_dict': state_dict}, src)
    result = child('tools/convert_checkpoint.py', '--src', 'greenmim_mm', src, out)
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])  # -11: segfault
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr
    assert lines[0].startswith(f'convert_checkpoint: error: cannot read {src}: it pickles '
                               'torch._utils._rebuild_qtensor (a quantized tensor): greenmim_mm '
                               'reads dense tensors only'), lines[0]
    assert not out.exists()


@pytest.mark.parametrize('name,what', [
    ('_rebuild_sparse_tensor', 'a sparse tensor'), ('_rebuild_nested_tensor', 'a nested tensor'),
    ('_rebuild_wrapper_subclass', 'a tensor subclass without storage'),
    ('_rebuild_meta_tensor_no_storage', 'a meta tensor without data'),
    ('_rebuild_device_tensor_from_cpu_tensor', 'a device tensor')])
def test_non_dense_rebuilds_are_refused_by_name(tmp_path, name, what):
    path = tmp_path / 'odd.pth'
    torch.save({'meta': {'x': Pickled(getattr(torch._utils, name), ())}}, path)
    with pytest.raises(UnsafeCheckpointError,
                       match=f'it pickles torch._utils.{name} \\({what}\\): greenmim_mm reads '
                       'dense tensors only'):
        load_checkpoint_file(str(path))


def test_real_sparse_and_quantized_tensors_are_refused(tmp_path):
    for value, name in ((torch.eye(3).to_sparse(), '_rebuild_sparse_tensor'),
                        (torch.quantize_per_tensor(torch.ones(3), 0.5, 0, torch.qint8),
                         '_rebuild_qtensor')):
        path = tmp_path / f'{name}.pth'
        torch.save({'w': value}, path)
        with pytest.raises(UnsafeCheckpointError, match=f'torch._utils.{name}'):
            load_checkpoint_file(str(path))


def test_quantized_storage_through_the_dense_rebuild_is_refused(tmp_path):
    """Plain ``torch.load(weights_only=True)`` builds a quantized tensor with an unchecked
    stride from a ``QUInt8Storage`` and the dense ``_rebuild_tensor_v2`` too."""
    path = tmp_path / 'qstorage.pth'
    write_torch_zip(path, {'w': dense(_Storage('0', 32, torch.QUInt8Storage), (32, ), (1 << 40, ))},
                    records={'0': bytes(32)})
    tensor = torch.load(path, weights_only=True)['w']
    assert tensor.is_quantized and tensor.stride() == (1 << 40, )  # never read it
    with pytest.raises(UnsafeCheckpointError,
                       match=r'it pickles torch.QUInt8Storage \(a quantized storage\)'):
        load_checkpoint_file(str(path))


def test_tensors_must_fit_their_storage():
    """The check behind every admitted rebuild (and torch's ``set_`` for dense ones): an expanded
    view (stride 0) or a quantized tensor is refused; a slice of a storage is fine."""
    budget = DecodeBudget()
    check_tensor(torch.arange(10.)[2:7:2], 'ok', budget)
    with pytest.raises(UnsafeTensor, match=r"x: a tensor of size \[1000\], strides \[0\] and "
                       r'offset 0 \(4000 bytes\) does not fit its storage of 4 bytes'):
        check_tensor(torch.zeros(1).expand(1000), 'x', budget)
    q = torch._empty_affine_quantized((4, ), scale=1.0, zero_point=0, dtype=torch.quint8)
    with pytest.raises(UnsafeTensor, match='quantized: True'):
        check_tensor(q, 'q', budget)


def test_dense_tensor_past_its_storage_is_refused(tmp_path):
    """A dense tensor whose stride passes its 32-byte record: torch's set_ refuses it."""
    path = tmp_path / 'dense.pth'
    write_torch_zip(path, {'w': dense(_Storage('0', 32), (32, ), (1 << 20, ))},
                    records={'0': bytes(32)})
    with pytest.raises(CheckpointLoadError, match='storage that is not resizable'):
        load_checkpoint_file(str(path))


# ---------------------------------------------------------------------------- 19.3 files
def crafted_files(tmp_path):
    """name -> (path, what the refusal says) for the issue's small hostile files."""
    files = {}

    def save(name, obj, expect):
        files[name] = (tmp_path / f'{name}.pth', expect)
        torch.save(obj, files[name][0])

    save('bytearray', {'meta': {'x': Pickled(bytearray, (4_000_000_000, ))}},
         'it calls builtins.bytearray(int)')
    save('stride0_tagged_array', {'meta': {'x': {
        TAG: 'ndarray', 'dtype': '<f8', 'shape': [1 << 27],
        'data': torch.zeros(1, dtype=torch.float64).expand(1 << 27)}}},
        "checkpoint['meta']['x']['data']: a tensor of size [134217728], strides [0]")
    row = [0] * 2000
    middle = [row] * 2000
    save('shared_list_array', {'meta': {'x': {TAG: 'ndarray', 'dtype': '<f8',
                                              'shape': [70, 2000, 2000], 'data': [middle] * 70}}},
         'a tagged ndarray <f8[70, 2000, 2000] would take 2240000000 bytes')
    save('tagged_scalar', {'meta': {'x': {TAG: 'numpy_scalar', 'dtype': '<U8',
                                          'value': shared_nested(40)}}},
         'a tagged numpy <U8 scalar holds a list')
    prime = (1 << 61) - 1
    save('colliding_int_keys', {'meta': {k * prime + 1: 0 for k in range(1, 20001)}},
         'a dict key of type int (2305843009213693952)')
    save('colliding_complex_keys', {'meta': {complex(1000003 * k, -k): 0
                                             for k in range(2, 20002)}},
         'a dict key of type builtins.complex')
    save('uninitialised_tensor', {'meta': {'x': Pickled(torch.Tensor, (1 << 30, ))}},
         'it calls torch.Tensor, which greenmim_mm does not call')
    files['zip_bomb'] = (tmp_path / 'zip_bomb.pth',
                         'zip record archive/data/0 is compressed')
    write_torch_zip(files['zip_bomb'][0], {'w': dense(_Storage('0', GiB), (GiB, ), (1, ))},
                    deflated={'0': GiB})
    return files


def test_small_files_cannot_ask_for_gigabytes_or_hours(tmp_path):
    """Issue 19.3: each file is refused within seconds and loading adds < 64 MiB to the child's
    peak RSS (absolute peak < 1 GiB). Before: bytearray 3.7-3.9 GB, zip bomb 4.0 GB, stride-0
    tagged array 1 GiB, shared-list array 2.24 GiB, tagged scalar > 20 s, colliding keys 18 s."""
    files = crafted_files(tmp_path)
    for name, (path, _) in files.items():
        assert path.stat().st_size < 1_200_000, (name, path.stat().st_size)  # kB, not GB
    report = measure(*[path for path, _ in files.values()], timeout=600)
    for name, (path, expect) in files.items():
        got = report[str(path)]
        assert got['outcome'].startswith(f'refused cannot read {path}: '), (name, got)
        assert expect in got['outcome'], (name, got['outcome'])
        assert '\n' not in got['outcome']
        assert got['seconds'] < 10, (name, got)
        assert got['extra_peak'] < 64 << 20 and got['peak'] < GiB, (name, got)


def test_declared_storage_must_match_its_record(tmp_path):
    path = tmp_path / 'short.pth'
    write_torch_zip(path, {'w': dense(_Storage('0', 1 << 40), (4, ), (1, ))},
                    records={'0': bytes(4)})
    with pytest.raises(UnsafeCheckpointError,
                       match="storage '0' declares 1099511627776 bytes, its record holds 4"):
        load_checkpoint_file(str(path))


def test_legacy_files_cannot_declare_more_storage_than_they_hold(tmp_path):
    """torch's legacy format allocates each storage at the size its id declares (4 GiB here)
    before reading the data that follows the pickles."""
    out = io.BytesIO()
    for part in (0x1950a86a20f9469cfc6c, 1001,
                 {'protocol_version': 1001, 'little_endian': True,
                  'type_sizes': {'short': 2, 'int': 4, 'long': 4}},
                 {'w': dense(_Storage('0', 1 << 30, torch.FloatStorage, legacy=True), (4, ),
                             (1, ))}, ['0']):
        _Pickler(out, protocol=2).dump(part)
    path = tmp_path / 'legacy.pth'
    path.write_bytes(out.getvalue() + (4).to_bytes(8, 'little') + bytes(16))
    with pytest.raises(UnsafeCheckpointError, match='its storages declare 4294967296 bytes, '
                       'more than the'):
        load_checkpoint_file(str(path))


def test_numpy_arrays_sharing_one_buffer_are_bounded(tmp_path):
    """Pickle memo: 2000 arrays reusing one 64 KiB raw buffer ask 128 MiB from a 100 kB file."""
    raw = bytes(1 << 16)
    from test_checkpoint_hostile import F8, array, dtype
    path = tmp_path / 'shared_raw.pth'
    torch.save({'meta': {'x': [array(dtype('f8', F8), (1 << 13, ), raw) for _ in range(2000)]}},
               path)
    assert path.stat().st_size < 200_000
    with pytest.raises(UnsafeCheckpointError, match="numpy array <f8\\[8192\\] would take 65536 "
                       "bytes, more than the .* bytes left of the file's numpy budget"):
        load_checkpoint_file(str(path))


# ---------------------------------------------------------------------------- 19.7 messages
@pytest.mark.parametrize('func,shown', [(False, 'bool'), ({}, 'dict')])
def test_calling_a_non_function_names_what_is_called(tmp_path, func, shown):
    """Before: 'it pickles builtins.False' / 'it pickles {}' (as if a global were refused)."""
    data = io.BytesIO()
    pickle.Pickler(data, protocol=2).dump({'x': Pickled(len, ())})
    body = data.getvalue().replace(b'c__builtin__\nlen\n', pickle.dumps(func, protocol=2)[2:-1])
    assert body != data.getvalue()
    path = tmp_path / 'call.pth'
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('archive/data.pkl', body)
        archive.writestr('archive/version', '3\n')
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint_file(str(path))
    message = str(err.value)
    assert f'its pickle data calls a {shown} value, not a function' in message
    assert 'builtins.False' not in message and 'pickles {}' not in message


# ---------------------------------------------------------------------------- to_plain memo
TO_PLAIN_SHARED = r'''
import sys, time, io, torch
from mmengine.logging import MessageHub
from greenmim_mm.checkpoint.plain_format import from_plain, to_plain
hub = MessageHub.get_instance('i19a')
nested = []
for _ in range(int(sys.argv[1])):
    nested = [nested, nested]
hub.update_info('shared', nested)
hub.update_scalar('train/loss', 0.5)
start = time.perf_counter()
plain = to_plain(hub.state_dict(), 'message_hub')
buffer = io.BytesIO()
torch.save(plain, buffer)
back = from_plain(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
shared = back['runtime_info']['shared']
assert shared[0] is shared[1] and shared[0][0] is shared[0][1]
print(time.perf_counter() - start, len(buffer.getvalue()))
'''


def test_to_plain_is_linear_in_the_object_graph():
    """Issue 19.3: a message hub holding a list shared 40 levels deep (2**40 paths) grew to
    9.1 GB at the next save; now it is converted once per object and stays shared."""
    result = child('-c', TO_PLAIN_SHARED, '40', timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    seconds, size = map(float, result.stdout.split())
    assert seconds < 5 and size < 100_000, (seconds, size)


def test_to_plain_keeps_sharing_and_refuses_cycles():
    arr = np.arange(3)
    plain = to_plain({'a': arr, 'b': [arr, arr]})
    assert plain['a'] is plain['b'][0] is plain['b'][1]
    restored = from_plain(plain)
    assert restored['a'] is restored['b'][0] and type(restored['a']) is np.ndarray
    cycle = []
    cycle.append(cycle)
    with pytest.raises(PlainFormatError, match=r"checkpoint\[0\]: a reference cycle through a "
                       'list'):
        to_plain(cycle)


def test_downloads_are_scanned_too(tmp_path):
    """mmengine's http(s)/torchvision/open-mmlab downloads (``load_url``): torch.hub's own
    weights-only load would skip the scan."""
    from mmengine.runner import checkpoint as mmengine_checkpoint
    path = tmp_path / 'bytearray.pth'
    torch.save({'meta': {'x': Pickled(bytearray, (4_000_000_000, ))}}, path)
    with pytest.raises(UnsafeCheckpointError, match=r'it calls builtins\.bytearray\(int\)'):
        mmengine_checkpoint.load_from_http(f'file://{path}', map_location='cpu',
                                           model_dir=str(tmp_path / 'hub'))


# ---------------------------------------------------------------------------- memo'd copies
def _text(value):
    raw = value.encode()
    return b'X' + len(raw).to_bytes(4, 'little') + raw


def _copies_of_one_memo_entry(kind, count):
    """Raw pickle data: ``{'meta': [..., f(v), f(v), ...]}`` where ``v`` is one memoized value
    (memo 2) and ``f`` (memo 3) copies it: each copy is 6 bytes of pickle (BINGET f, BINGET v,
    TUPLE1, REDUCE or BUILD) however large ``v`` is."""
    data = b'\x80\x02}' + _text('meta') + b']('
    if kind == 'bytearray':  # v: 64 KiB of bytes (_codecs.encode of a latin-1 string)
        data += b'c_codecs\nencode\n' + _text('a' * (1 << 16)) + _text('latin1') + b'\x86Rq\x02'
        data += b'cbuiltins\nbytearray\nq\x03' + b'h\x03h\x02\x85R' * count
    elif kind == 'set':  # v: a list of 20,000 ints
        data += b']q\x02(' + b''.join(b'J' + i.to_bytes(4, 'little') for i in range(20000))
        data += b'ecbuiltins\nset\nq\x03' + b'h\x03h\x02\x85R' * count
    elif kind == 'Counter':  # v: Counter(d) of a dict d of 20,000 entries; Counter(v) copies d
        data += b'ccollections\nCounter\nq\x03}('
        data += b''.join(b'J' + i.to_bytes(4, 'little') + b'N' for i in range(20000))
        data += b'u\x85Rq\x02' + b'h\x03h\x02\x85R' * count
    else:  # OrderedDict() whose BUILD state is v, a dict of 20,000 entries
        data += b'}q\x02(' + b''.join(b'J' + i.to_bytes(4, 'little') + b'N' for i in range(20000))
        data += b'uccollections\nOrderedDict\nq\x03' + b'h\x03)Rh\x02b' * count
    return data + b'es.'


@pytest.mark.parametrize('kind', ['bytearray', 'set', 'Counter', 'OrderedDict'])
def test_a_memoized_value_cannot_be_copied_again_and_again(tmp_path, kind):
    """Issue 19.3 (found in review): ``bytearray(v)`` / ``set(v)`` / OrderedDict BUILD ``v`` of
    one memoized ``v``, repeated, costs 6 bytes of pickle per copy of ``v``: a 78 kB file asked
    128 MiB, a 100 kB one 1.6 GiB and 87 s. The scan bounds the items / bytes all calls and
    BUILDs copy to twice the pickle's size; one copy of each still loads."""
    for count, refused in ((1, False), (16, True)):
        path = tmp_path / f'{kind}_{count}.pth'
        with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as archive:
            archive.writestr('archive/data.pkl', _copies_of_one_memo_entry(kind, count))
            archive.writestr('archive/byteorder', 'little')
            archive.writestr('archive/version', '3\n')
        if not refused:
            assert len(load_checkpoint_file(str(path))['meta']) == 2 + (kind != 'Counter')
            continue
        with pytest.raises(UnsafeCheckpointError,
                           match=r'copies \d+ items/bytes in all, more than the \d+ the pickle '
                           r'data can hold once each \(a memoized value copied again'):
            load_checkpoint_file(str(path))


@pytest.mark.parametrize('other', ['archive/Data.pkl', 'archive/DATA.PKL'])
def test_records_whose_names_differ_only_in_case_are_refused(tmp_path, other):
    """Found in review: torch's miniz finds ``archive/data.pkl`` ignoring case, so with a second
    record ``archive/Data.pkl`` torch unpickled that one while the scan read the first: a
    ``bytearray(4e9)`` there passed the scan."""
    path = tmp_path / 'case.pth'
    evil = io.BytesIO()
    pickle.Pickler(evil, protocol=2).dump({'meta': Pickled(bytearray, (4_000_000_000, ))})
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as archive:
        archive.writestr('archive/data.pkl', pickle.dumps({'meta': 1}, protocol=2))
        archive.writestr('archive/byteorder', 'little')
        archive.writestr(other, evil.getvalue())
        archive.writestr('archive/version', '3\n')
    with pytest.raises(UnsafeCheckpointError, match='two records of the same name'):
        load_checkpoint_file(str(path))

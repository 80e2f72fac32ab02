"""Issue 9.1, review of the safe loader: config text, numpy dtype state, refusal messages, the
upgrade tool and mmengine's remote schemes.

A: no config text from a file is executed (mmengine's ``Runner.resume`` runs ``meta['config']``,
   its inferencers ``meta['cfg']`` / ``message_hub['runtime_info']['cfg']``).
B: numpy values are rebuilt from canonical dtypes; a file cannot hand numpy a dtype state whose
   object field overlaps an int field (a segfault when read). Crafted files run in subprocesses so
   a crash fails the test instead of killing pytest.
C/D: refusal messages point to the README, never to a command that runs the file; the upgrade
   tool warns before unpickling and fails with one line; clean messages for odd pickles.
E: ``s3://``, ``petrel://``, ``pavi://``, ``open-mmlab://`` and unknown schemes.
Payloads write a marker file only if they run.
"""
import errno
import json
import os
import os.path as osp
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.runner import checkpoint as mmengine_checkpoint

import greenmim_mm  # noqa: F401  (registers the safe loader)
from greenmim_mm.checkpoint.loading import (CheckpointLoadError, UnsafeCheckpointError,
                                            load_checkpoint_file, register_with_mmengine)
from test_checkpoint_loading import (PRETRAIN_DEMO, ROOT, assert_points_to_readme, run_tool,
                                     write_payload)

_CORE = np._core if hasattr(np, '_core') else np.core


def python(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope='module')
def tiny_demo(demo_data_factory):
    return demo_data_factory('hostile_data', train_per_class=1, val_per_class=1)


# ---------------------------------------------------------------------------- crafted numpy
class Pickled:
    """Pickles as ``func(*args)`` followed by BUILD ``state`` (what numpy's reduce gives)."""

    def __init__(self, func, args, state=None):
        self.reduced = (func, args) if state is None else (func, args, state)

    def __reduce__(self):
        return self.reduced


def dtype(spec, state):
    return Pickled(np.dtype, (spec, False, True), state)


def overlapping_dtype():
    """A structured dtype whose object field 'a' overlaps int field 'b', flags 0 (hasobject
    False): numpy takes the file's word for the layout."""
    fields = {'a': (dtype('O8', (3, '|', None, None, None, -1, -1, 63)), 0),
              'b': (dtype('i8', (3, '<', None, None, None, -1, -1, 0)), 0)}
    return dtype('V8', (3, '|', None, ('a', 'b'), fields, 8, 1, 0))


def array(spec_dtype, shape, raw, fortran=False):
    return Pickled(_CORE.multiarray._reconstruct, (np.ndarray, (0, ), b'b'),
                   (1, shape, spec_dtype, fortran, raw))


POINTER = (0x4141414141414140).to_bytes(8, 'little')
F8 = (3, '<', None, None, None, -1, -1, 0)
CRAFTED = {  # name -> (value stored at meta['epoch'], what the refusal names)
    'overlap_array': (lambda: array(overlapping_dtype(), (), POINTER), "['epoch'].dtype"),
    'overlap_scalar': (lambda: Pickled(_CORE.multiarray.scalar, (overlapping_dtype(), POINTER)),
                       "['epoch'].dtype"),
    'object_array': (lambda: array(dtype('O8', (3, '|', None, None, None, -1, -1, 63)), (1, ),
                                   POINTER), "['epoch'].dtype: numpy dtype 'O8'"),
    'short_data': (lambda: array(dtype('f8', F8), (1000, ), POINTER), 'needs 8000 bytes'),
    'wrong_itemsize': (lambda: array(dtype('f8', (3, '<', None, None, None, 4096, 8, 0)), (1, ),
                                     POINTER), 'pickled with item size 4096'),
    'subarray': (lambda: array(dtype('V16', (3, '|', (dtype('i8', F8), (2, )), None, None, 16, 8,
                                             0)), (1, ), POINTER * 2), 'non-plain pickled state'),
}


def write_crafted(path, name):
    torch.save({'state_dict': {'w': torch.zeros(1)},
                'meta': {'epoch': CRAFTED[name][0](), 'iter': 1}}, path)


LOAD_AND_READ = '''
import json, sys
import greenmim_mm
from greenmim_mm.checkpoint.loading import UnsafeCheckpointError, load_checkpoint_file
out = {}
for path in sys.argv[1:]:
    try:
        value = load_checkpoint_file(path)['meta']['epoch']
        out[path] = 'loaded ' + repr(value)  # reads the element data
    except UnsafeCheckpointError as err:
        out[path] = 'refused ' + str(err)
print(json.dumps(out))
'''


def test_crafted_numpy_values_are_refused_before_anything_reads_them(tmp_path):
    paths = {}
    for name in CRAFTED:
        paths[name] = str(tmp_path / f'{name}.pth')
        write_crafted(paths[name], name)
    with pytest.raises(Exception, match='Unsupported global'):  # plain torch refuses them too
        torch.load(paths['overlap_array'], weights_only=True)
    result = python('-c', LOAD_AND_READ, *paths.values())
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])  # -11: segfault
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    for name, path in paths.items():
        message = outcome[path]
        assert message.startswith(f"refused cannot read {path}: checkpoint['meta']"), message
        assert CRAFTED[name][1] in message, (name, message)
        assert 'can crash the process or corrupt memory' in message
        assert_points_to_readme(message)


def test_train_resume_refuses_the_overlapping_dtype(tmp_path, tiny_demo):
    """The review's crash: ``meta['epoch']`` an overlapping-dtype array; ``--resume`` segfaulted
    (rc 139) formatting the epoch. Now one error line, exit 1."""
    path = tmp_path / 'evil_epoch.pth'
    write_crafted(path, 'overlap_array')
    result = python('tools/train.py', PRETRAIN_DEMO, '--work-dir', str(tmp_path / 'w'),
                    '--resume', str(path), '--cfg-options', 'train_cfg.max_epochs=2',
                    f'train_dataloader.dataset.data_root={tiny_demo}/')
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train: error: cannot read {path}: checkpoint['meta']['epoch'].dtype:")
    assert 'Traceback' not in result.stderr


def test_plain_numpy_values_of_every_kind_still_load(tmp_path):
    """Real numpy pickles (numpy 2 writer): byte orders, Fortran order, 0-d, empty (raw data
    ``bytes()``), str/bytes arrays, scalars and dtypes come back equal, with the same dtype."""
    values = {'f_order': np.asfortranarray(np.arange(6, dtype='>f4').reshape(2, 3)),
              'zero_d': np.array(2.5), 'text': np.array(['ab', 'c']), 'raw': np.array([b'xy']),
              'empty': np.zeros((0, 3), dtype=np.int16), 'c': np.complex64(1 + 2j),
              'u': np.uint8(200), 'b': np.bool_(True), 'dt': np.dtype('<U3'),
              'shared': [np.arange(2)] * 2}
    path = tmp_path / 'np.pth'
    torch.save(values, path)
    loaded = load_checkpoint_file(str(path))
    for key in ('f_order', 'zero_d', 'text', 'raw', 'empty'):
        got, want = loaded[key], values[key]
        assert type(got) is np.ndarray and got.dtype == want.dtype and got.shape == want.shape
        assert got.flags.owndata or got.base is not None and got.base.flags.owndata
        np.testing.assert_array_equal(got, want)
    assert loaded['f_order'].flags.f_contiguous
    for key in ('c', 'u', 'b'):
        assert type(loaded[key]) is type(values[key]) and loaded[key] == values[key]
    assert loaded['dt'] == np.dtype('<U3')
    assert loaded['shared'][0] is loaded['shared'][1]  # pickle memo references stay shared


# ---------------------------------------------------------------------------- A: config text
EVIL_CONFIG = "open({marker!r}, 'w').write('ran')\n"


def config_value(text, form):
    """Config text as a plain str, or (second review) as a tagged numpy str_ scalar of our own
    plain format, which the loader restores into a ``str`` subclass."""
    from greenmim_mm.checkpoint.plain_format import TAG
    if form == 'str':
        return text
    return {TAG: 'numpy_scalar', 'dtype': f'<U{len(text)}', 'value': text}


@pytest.mark.parametrize('form', ['str', 'tagged numpy str_'])
def test_config_text_is_not_loaded(tmp_path, form):
    """``meta['config']``, ``meta['cfg']`` and the message hub's ``cfg`` are dropped; mmengine's
    inferencer (built without a config) then finds no config instead of executing one."""
    from mmengine.infer import BaseInferencer
    marker = tmp_path / 'MARKER'
    text = config_value(EVIL_CONFIG.format(marker=str(marker)), form)
    path = tmp_path / 'evil_cfg.pth'
    hub = {'log_scalars': {}, 'runtime_info': {'cfg': text, 'epoch': 1},
           'resumed_keys': {'cfg': True, 'epoch': True}}
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'message_hub': hub,
                'meta': {'config': text, 'cfg': text, 'epoch': 1, 'seed': 0}}, path)
    loaded = load_checkpoint_file(str(path))
    assert loaded['meta'] == {'epoch': 1, 'seed': 0}
    assert loaded['message_hub']['runtime_info'] == {'epoch': 1}
    assert loaded['message_hub']['resumed_keys'] == {'epoch': True}
    with pytest.raises(ValueError, match='Cannot find the config in the checkpoint'):
        BaseInferencer._init_model(object(), ConfigDict(), str(path))
    assert not marker.exists()


@pytest.mark.parametrize('form', ['str', 'tagged numpy str_'])
def test_train_resume_does_not_run_config_text(tmp_path, tiny_demo, form):
    """The review's reproduction: a real training checkpoint with ``meta['config']`` set to code,
    resumed through ``tools/train.py --resume``: the code does not run, training continues."""
    work = tmp_path / 'w'
    args = [PRETRAIN_DEMO, '--work-dir', work, '--cfg-options', 'train_dataloader.batch_size=5',
            f'train_dataloader.dataset.data_root={tiny_demo}/']
    assert run_tool('tools/train.py', *args[:3], *args[3:], 'train_cfg.max_epochs=1') == 0
    checkpoint = torch.load(work / 'epoch_1.pth', weights_only=True)
    marker = tmp_path / 'MARKER'
    checkpoint['meta']['config'] = config_value(EVIL_CONFIG.format(marker=str(marker)), form)
    evil = tmp_path / 'real_evil.pth'
    torch.save(checkpoint, evil)
    work2 = tmp_path / 'w2'
    result = python('tools/train.py', PRETRAIN_DEMO, '--work-dir', str(work2), '--resume',
                    str(evil), '--cfg-options', 'train_dataloader.batch_size=5',
                    f'train_dataloader.dataset.data_root={tiny_demo}/', 'train_cfg.max_epochs=2')
    assert result.returncode == 0, result.stderr[-3000:]
    assert not marker.exists()
    output = result.stdout + result.stderr
    assert (f"ignoring meta['config'] in {evil}: config text in a checkpoint is Python code"
            in output)
    assert 'resumed epoch: 1' in output
    resumed = load_checkpoint_file(str(work2 / 'epoch_2.pth'))
    assert 'config' not in resumed['meta']


def _tagged_array(dtype, shape, data):
    from greenmim_mm.checkpoint.plain_format import TAG
    return {TAG: 'ndarray', 'dtype': dtype, 'shape': shape, 'data': data}


@pytest.mark.parametrize('value,problem', [
    # a 2.7 kB file asking for 3.7 GiB (1000 strings of 999,999 characters)
    (_tagged_array('<U999999', [1000], torch.zeros(1000, dtype=torch.uint8)), 'would take'),
    (_tagged_array('<U999999', [100000], [''] * 100000), 'would take'),
    (_tagged_array('<f8', [3], torch.zeros(2, dtype=torch.float64)), 'holds 2 values'),
    (_tagged_array('<f8', [2**32, 2**32], torch.zeros(0, dtype=torch.float64)), 'shape'),
    (_tagged_array('<f8', [2**70], []), 'shape'),
])
def test_tagged_arrays_are_bounded_by_the_data_in_the_file(tmp_path, value, problem):
    """Second review: restoring a tagged array allocated dtype x shape whatever the file held."""
    path = tmp_path / 'big.pth'
    torch.save({'meta': {'epoch': value}}, path)
    with pytest.raises(CheckpointLoadError, match=problem):
        load_checkpoint_file(str(path))


def test_shared_references_restore_in_linear_time(tmp_path):
    """Second review: a list holding the same list twice, 40 levels deep (a 1.5 kB file), took
    exponential time to restore; shared references are restored once now."""
    nested = []
    for _ in range(40):
        nested = [nested, nested]
    path = tmp_path / 'deep.pth'
    torch.save({'meta': {'x': nested}}, path)
    result = python('-c', 'import sys, greenmim_mm\n'
                    'from greenmim_mm.checkpoint.loading import load_checkpoint_file\n'
                    'x = load_checkpoint_file(sys.argv[1])["meta"]["x"]\n'
                    'assert x[0] is x[1]; print("ok")', str(path), timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr[-2000:]


# ---------------------------------------------------------------------------- C/D: messages
def test_upgrade_tool_warns_before_unpickling_and_fails_with_one_line(tmp_path):
    """Review C: ``--trust`` on an attack file. The payload runs (that is what --trust means), but
    only after a warning, and a failure is exit 1 with one error line, never a traceback."""
    marker = tmp_path / 'MARKER'
    evil = tmp_path / 'evil.pth'
    write_payload(evil, marker, expression=f"open({str(marker)!r}, 'w').write('ran')")
    out = tmp_path / 'new.pth'
    result = python('tools/upgrade_checkpoint.py', '--trust', str(evil), str(out))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr
    assert lines[0].startswith(f'upgrade_checkpoint: warning: the safe loader refuses {evil}; '
                               'unpickling it with weights_only=False now, which runs any code')
    assert lines[-1].startswith('upgrade_checkpoint: error: AttributeError: ')
    assert len(lines) == 2 and not out.exists() and marker.exists()


def test_upgrade_tool_reads_a_safe_file_without_unpickling(tmp_path):
    path = tmp_path / 'old.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': {'seed': np.int64(3)}}, path)
    result = python('tools/upgrade_checkpoint.py', '--trust', str(path), str(tmp_path / 'n.pth'))
    assert result.returncode == 0 and 'warning' not in result.stderr, result.stderr
    assert torch.load(tmp_path / 'n.pth', weights_only=True)['meta']['seed']['value'] == 3


def test_unsupported_opcode_message_is_clean(tmp_path):
    path = tmp_path / 'odd.pth'
    path.write_bytes(b'\x80\x02I1\n.')  # INT: an opcode the weights-only unpickler lacks
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint_file(str(path))
    message = str(err.value)
    assert message.startswith(f'cannot read {path}: its pickle data is refused by weights-only '
                              'loading (Unsupported operand 73); it is malformed or uses pickle '
                              'features that can run code.')
    assert 'Weights only load failed' not in message and 'PyTorch 2.6' not in message
    assert_points_to_readme(message)


def test_bytes_is_only_allowed_empty(tmp_path):
    """``builtins.bytes`` answers only ``bytes()`` (empty arrays), not an allocation."""
    path = tmp_path / 'alloc.pth'
    torch.save({'x': Pickled(bytes, (10**12, ))}, path)
    with pytest.raises(UnsafeCheckpointError, match=r'it calls builtins\.bytes\(int\), which is '
                       r'not an inert value'):
        load_checkpoint_file(str(path))


def test_converter_write_failure_without_an_existing_output(tmp_path, monkeypatch):
    """Review D4: no 'an existing out.pth is unchanged' when there was none."""
    from greenmim_mm.checkpoint import atomic_files as fileio
    from greenmim_mm.converters import ConversionError, convert_file
    from greenmim_mm.models import GreenSwinTransformer
    backbone = GreenSwinTransformer(arch=dict(embed_dims=16, depths=[1, 1], num_heads=[1, 2]),
                                    img_size=32, window_size=4, out_indices=(1, ))
    src = tmp_path / 'in.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in backbone.state_dict().items()}},
               src)
    out = tmp_path / 'out.pth'

    def full_disk(path, write):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(fileio, 'atomic_write', full_disk)
    with pytest.raises(ConversionError) as err:
        convert_file(str(src), str(out), 'greenmim_mm')
    assert str(err.value) == (f'cannot write {out}: No space left on device (errno 28); nothing '
                              'was written')
    assert not out.exists()


# ---------------------------------------------------------------------------- E: remote schemes
@pytest.fixture
def files(tmp_path):
    marker = tmp_path / 'MARKER'
    evil, good = tmp_path / 'evil.pth', tmp_path / 'good.pth'
    write_payload(evil, marker)
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': {'seed': np.int64(5),
                                                            'config': 'x = 1\n'}}, good)
    return {'evil': evil, 'good': good, 'marker': marker}


def assert_safe_scheme(url_of, files):
    """``url_of(kind)``: the URL that makes the faked backend serve ``files[kind]``."""
    load = mmengine_checkpoint.CheckpointLoader.load_checkpoint
    with pytest.raises(UnsafeCheckpointError) as err:
        load(url_of('evil'), map_location='cpu')
    assert str(err.value).startswith(f"cannot read {url_of('evil')}: it pickles builtins.getattr(")
    assert not files['marker'].exists()
    good = load(url_of('good'), map_location='cpu')
    assert torch.equal(good['state_dict']['w'], torch.ones(2))
    assert type(good['meta']['seed']) is np.int64 and 'config' not in good['meta']


def test_ceph_schemes_load_weights_only(files, monkeypatch):
    class FakeBackend:
        def get(self, filepath):
            return files[filepath.rsplit('/', 1)[-1][:-4]].read_bytes()

    monkeypatch.setattr(mmengine_checkpoint, 'get_file_backend', lambda *a, **k: FakeBackend())
    for prefix in ('s3://bucket/', 'cluster1:s3://bucket/', 'petrel://bucket/'):
        assert_safe_scheme(lambda kind: f'{prefix}{kind}.pth', files)


def test_pavi_scheme_loads_weights_only(files, monkeypatch):
    class Model:
        def __init__(self, name):
            self.name = f'{name}.pth'

        def download(self, destination):
            with open(destination, 'wb') as f:
                f.write(files[self.name[:-4]].read_bytes())

    pavi = types.ModuleType('pavi')
    pavi.modelcloud = types.SimpleNamespace(get=lambda path: Model(path.rsplit('/', 1)[-1]))
    monkeypatch.setitem(sys.modules, 'pavi', pavi)
    assert_safe_scheme(lambda kind: f'pavi://project/{kind}', files)


def test_openmmlab_scheme_with_a_local_file_loads_weights_only(files, monkeypatch, tmp_path):
    monkeypatch.setattr(mmengine_checkpoint, 'get_external_models',
                        lambda: {'evil': 'evil.pth', 'good': 'good.pth'})
    monkeypatch.setattr(mmengine_checkpoint, '_get_mmengine_home', lambda: str(tmp_path))
    for prefix in ('open-mmlab://', 'openmmlab://'):
        load = mmengine_checkpoint.CheckpointLoader.load_checkpoint
        with pytest.raises(UnsafeCheckpointError, match='builtins.getattr'):
            load(f'{prefix}evil', map_location='cpu')
        assert torch.equal(load(f'{prefix}good')['state_dict']['w'], torch.ones(2))
    assert not files['marker'].exists()


def test_unknown_schemes_are_refused(files, monkeypatch):
    """A scheme someone else registered (calling torch.load as it likes) cannot be checked."""
    loader = mmengine_checkpoint.CheckpointLoader
    monkeypatch.setattr(loader, '_schemes', dict(loader._schemes))

    def load_from_foo(filename, map_location=None):
        return torch.load(files['evil'], weights_only=False)

    loader.register_scheme('foo://', load_from_foo)
    register_with_mmengine()
    with pytest.raises(CheckpointLoadError, match="its scheme 'foo://' loads files with a loader "
                       'greenmim_mm cannot check'):
        loader.load_checkpoint('foo://x.pth')
    assert not files['marker'].exists()
    assert loader._get_checkpoint_loader('https://x/y.pth').__name__ == 'load_from_http'

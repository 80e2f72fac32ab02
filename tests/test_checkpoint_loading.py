"""Issue 9.1: no code execution from checkpoints, through any entry point.

The payload of the issue: ``getattr`` reaches ``builtins`` from a builtin function's ``__self__``,
then ``eval``, which ``torch._tensor._rebuild_from_type_v2`` (allowed by torch by default) calls.
It writes a marker file only if it runs. It must be refused with a clear error by every place
greenmim_mm loads a file, while checkpoints we wrote before the plain format, mmengine/mmpretrain
style files with numpy meta and official GreenMIM files (``args`` Namespace) still load.
"""
import argparse
import builtins
import os
import os.path as osp
import pickle
import runpy
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.logging import HistoryBuffer
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmengine.runner import checkpoint as mmengine_checkpoint

import greenmim_mm  # noqa: F401  (registers the safe loader)
from greenmim_mm.checkpoint.loading import (CheckpointLoadError, UnsafeCheckpointError,
                                            load_checkpoint_file)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PRETRAIN_DEMO = osp.join(ROOT, 'configs/pretrain/greenmim_swin-nano_demo_128px.py')
FINETUNE_PT = osp.join(ROOT, 'configs/finetune/greenswin-nano_greenmim-pt_demo-cls_128px.py')
DETECTION = osp.join(ROOT, 'configs/detection/mask-rcnn_greenswin-nano_fpn_demo_128px.py')


def write_payload(path, marker, expression=None) -> None:
    """The issue's payload: runs ``open(marker, 'w')`` through eval if unpickled with getattr
    reachable, and then loads as a normal checkpoint (the default expression returns a tensor)."""
    expression = expression or (
        f"(open({str(marker)!r}, 'w').write('pwned'), __import__('torch').zeros(1))[1]")

    class B:
        __reduce__ = lambda self: (getattr, (getattr, '__self__'))  # noqa: E731  -> builtins

    class E:
        __reduce__ = lambda self: (getattr, (B(), 'eval'))  # noqa: E731

    class P:
        __reduce__ = lambda self: (torch._tensor._rebuild_from_type_v2,  # noqa: E731
                                   (E(), torch.Tensor, (expression, ), None))

    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': {'x': P()}}, path)


@pytest.fixture
def payload(tmp_path):
    marker = tmp_path / 'PWNED'
    path = tmp_path / 'payload.pth'
    write_payload(path, marker)
    return str(path), marker


@pytest.fixture(scope='module')
def tiny_demo(demo_data_factory):
    return demo_data_factory('payload_data', train_per_class=1, val_per_class=1)


def run_tool(script, *args):
    """Run ``tools/<script>`` as ``python tools/<script> ARGS`` would, in this process (a fresh
    interpreter per tool costs ~20 s on the shared CPUs); return its exit code or message."""
    argv, path = sys.argv, list(sys.path)
    sys.argv = [osp.join(ROOT, script), *map(str, args)]
    sys.path.insert(0, osp.dirname(sys.argv[0]))  # as python does for a script (tools/_light.py)
    try:
        runpy.run_path(sys.argv[0], run_name='__main__')
    except SystemExit as exit_:
        return exit_.code
    finally:
        sys.argv, sys.path[:] = argv, path
    return 0


def assert_one_line_error(code, tool: str, path: str) -> None:
    """``SystemExit(message)``: exit status 1 and the message as the only stderr line."""
    assert isinstance(code, str) and code.startswith(f'{tool}: error: '), code
    assert '\n' not in code
    assert_refused(code, path)


def assert_refused(message: str, path: str) -> None:
    """The payload named as pickled (no internal reprs), and no command that would run it."""
    assert (f"cannot read {path}: it pickles builtins.getattr(builtins.getattr, '__self__')"
            in message) and 'which is not allowed' in message
    assert ' at 0x' not in message and '<function' not in message
    assert_points_to_readme(message)


def assert_points_to_readme(message: str) -> None:
    """Issue 9 review C: a refusal points to the README, says the upgrade tool runs the file's
    code, and hands out no command (running the upgrade tool on an attack file runs it)."""
    assert 'see README.md, section "Checkpoint files"' in message
    assert 'runs the code in the file and is only for files you produced yourself' in message
    assert 'upgrade_checkpoint' not in message and '--trust' not in message


# ---------------------------------------------------------------------------- the payload
def test_payload_runs_when_getattr_is_allowed(payload):
    """The test's payload is live: the old allow-list (getattr) lets it write the marker."""
    path, marker = payload
    with torch.serialization.safe_globals([builtins.getattr]):
        loaded = torch.load(path, weights_only=True)
    assert marker.read_text() == 'pwned' and torch.equal(loaded['meta']['x'], torch.zeros(1))


def test_payload_refused_by_the_loader_and_mmengine(payload):
    path, marker = payload
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint_file(path)
    assert_refused(str(err.value), path)
    with pytest.raises(UnsafeCheckpointError):
        mmengine_checkpoint.CheckpointLoader.load_checkpoint(path, map_location='cpu')
    with pytest.raises(UnsafeCheckpointError):
        mmengine_checkpoint.load_checkpoint(torch.nn.Linear(1, 1), path)
    assert not marker.exists()


def test_payload_refused_through_urls(payload, tmp_path):
    """``http(s)://``, ``torchvision://``, ``open-mmlab://`` and ``mmcls://`` all download through
    mmengine's ``load_from_http`` (torch.hub, weights_only=False by default); a file:// URL
    exercises the same download-and-load path without a network."""
    path, marker = payload
    with pytest.raises(UnsafeCheckpointError, match='which is not allowed'):
        mmengine_checkpoint.load_from_http(f'file://{path}', map_location='cpu',
                                           model_dir=str(tmp_path / 'hub'))
    assert not marker.exists()
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': {'seed': np.int64(1)}}, good)
    loaded = mmengine_checkpoint.load_from_http(f'file://{good}', map_location='cpu',
                                                model_dir=str(tmp_path / 'hub'))
    assert torch.equal(loaded['state_dict']['w'], torch.ones(2)) and loaded['meta']['seed'] == 1


def test_payload_refused_by_convert_checkpoint(payload, tmp_path):
    path, marker = payload
    out = tmp_path / 'out.pth'
    code = run_tool('tools/convert_checkpoint.py', '--src', 'greenmim_mm', path, out)
    assert_one_line_error(code, 'convert_checkpoint', path)
    assert not marker.exists() and not out.exists()


def test_payload_refused_by_train_resume(payload, tmp_path, tiny_demo):
    path, marker = payload
    code = run_tool('tools/train.py', PRETRAIN_DEMO, '--work-dir', tmp_path / 'w', '--resume',
                    path, '--cfg-options', 'train_dataloader.batch_size=2',
                    f'train_dataloader.dataset.data_root={tiny_demo}/')
    assert_one_line_error(code, 'train', path)
    assert not marker.exists()


def test_payload_refused_by_visualize_reconstruction(payload, tmp_path):
    path, marker = payload
    out = tmp_path / 'grid.png'
    code = run_tool('tools/visualize_reconstruction.py', PRETRAIN_DEMO, path, '--out', out,
                    '--data-root', tmp_path)
    assert_one_line_error(code, 'visualize_reconstruction', path)
    assert not marker.exists() and not out.exists()


def test_payload_refused_by_tools_test(payload, tmp_path, tiny_demo):
    path, marker = payload
    finetune = osp.join(ROOT, 'configs/finetune/greenswin-nano_demo-cls_128px.py')
    code = run_tool('tools/test.py', finetune, path, '--work-dir', tmp_path / 'w',
                    '--cfg-options', f'test_dataloader.dataset.data_root={tiny_demo}/')
    assert_one_line_error(code, 'test', path)
    assert not marker.exists()


def test_payload_refused_by_convert_checkpoint_process(payload, tmp_path):
    """The same from a shell: exit status 1, one stderr line, no traceback."""
    path, marker = payload
    out = tmp_path / 'out.pth'
    result = subprocess.run(
        [sys.executable, 'tools/convert_checkpoint.py', '--src', 'greenmim_mm', path, str(out)],
        cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 1
    assert result.stderr.count('\n') == 1 and result.stderr.startswith('convert_checkpoint: ')
    assert_refused(result.stderr, path)
    assert not marker.exists() and not out.exists()


def test_payload_refused_by_load_from(payload, tmp_path):
    from mmengine.model import BaseModel

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, *args, mode='tensor', **kwargs):
            return self.w

    path, marker = payload
    runner = Runner(model=Toy(), work_dir=str(tmp_path / 'w'), load_from=path,
                    default_scope='mmengine', experiment_name='payload_load_from')
    with pytest.raises(UnsafeCheckpointError) as err:
        runner.load_or_resume()
    assert_refused(str(err.value), path)
    assert not marker.exists()


@pytest.mark.parametrize('config,registry_scope', [(FINETUNE_PT, 'mmpretrain'),
                                                   (DETECTION, 'mmdet')])
def test_payload_refused_by_config_init_cfg(payload, config, registry_scope):
    """A shipped transfer config's ``backbone.init_cfg=dict(type='Pretrained', ...)`` (our
    backbone under mmpretrain's and mmdet's model builders) pointed at the payload."""
    path, marker = payload
    cfg = Config.fromfile(config)
    assert cfg.model.backbone.init_cfg.type == 'Pretrained'
    cfg.model.backbone.init_cfg.checkpoint = path
    init_default_scope(cfg.get('default_scope', registry_scope))
    if registry_scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    model = MODELS.build(cfg.model)
    with pytest.raises(UnsafeCheckpointError) as err:
        model.init_weights()
    assert_refused(str(err.value), path)
    assert not marker.exists()


def test_payload_refused_by_mmdet_swin_init_weights(payload):
    """mmdet's own Swin reads ``init_cfg`` checkpoints with ``CheckpointLoader`` directly."""
    from mmdet.models.backbones import SwinTransformer
    path, marker = payload
    swin = SwinTransformer(embed_dims=16, depths=(1, 1), num_heads=(1, 1), strides=(4, 2),
                           out_indices=(1, ),
                           init_cfg=ConfigDict(type='Pretrained', checkpoint=path))
    with pytest.raises(UnsafeCheckpointError):
        swin.init_weights()
    assert not marker.exists()


def test_upgrade_tool_needs_trust(payload, tmp_path):
    path, marker = payload
    assert run_tool('tools/upgrade_checkpoint.py', path, tmp_path / 'o.pth') == 2  # argparse
    assert not marker.exists() and not (tmp_path / 'o.pth').exists()


# ---------------------------------------------------------------------------- what still loads
class NotAllowed:
    pass


def test_other_classes_and_bad_files_are_clear_errors(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'x': NotAllowed()}, path)
    with pytest.raises(UnsafeCheckpointError,
                       match=rf'cannot read {path}: it pickles '
                       r'test_checkpoint_loading.NotAllowed, which is not allowed'):
        load_checkpoint_file(str(path))
    truncated = tmp_path / 'truncated.pth'
    torch.save({'w': torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(CheckpointLoadError, match=f'cannot read {truncated} as a torch checkpoint'):
        load_checkpoint_file(str(truncated))
    with pytest.raises(FileNotFoundError, match='can not be found'):
        load_checkpoint_file(str(tmp_path / 'nope.pth'))


@pytest.mark.parametrize('raw,message', [
    (b'\x80\x02}q\x00)R.', r'its pickle data calls a dict value, not a function'),
    (b'\x80\x02K\x01}b.', r'it sets the state of an object of type int \(pickle BUILD\)')])
def test_refusals_without_a_global_say_what_the_file_does(tmp_path, raw, message):
    """Issue 19.7: a REDUCE of a dict read 'it pickles {}', a BUILD on an int 'it pickles Can
    only build Tensor, ...': neither names a global. The message now says what the file does
    (the static scan, greenmim_mm/checkpoint/scan.py, refuses both before torch's unpickler)."""
    path = tmp_path / 'odd.pth'
    path.write_bytes(raw)
    with pytest.raises(UnsafeCheckpointError, match=rf'^cannot read {path}: {message}'):
        load_checkpoint_file(str(path))


def test_foreign_files_with_inert_objects_load(tmp_path):
    """Official GreenMIM / MAE / timm training files (``args`` Namespace), mmcv/mmengine-style
    meta with numpy scalars and arrays (numpy 2 and numpy 1 module names)."""
    args = argparse.Namespace(model='swin_base', mask_ratio=0.75, input_size=224)
    official = {'model': {'encoder.w': torch.ones(2)}, 'args': args, 'epoch': 799,
                'scaler': {'scale': 65536.0}}
    path = tmp_path / 'official.pth'
    torch.save(official, path)
    loaded = load_checkpoint_file(str(path))
    assert loaded['args'] == args and torch.equal(loaded['model']['encoder.w'], torch.ones(2))

    meta = {'seed': np.int64(1234), 'mean': np.array([0.5, 0.25], dtype=np.float32),
            'classes': ('a', 'b'), 'scale': np.float64(0.1)}
    path = tmp_path / 'zoo.pth'
    torch.save({'meta': meta, 'state_dict': OrderedDict(w=torch.ones(1))}, path)
    loaded = load_checkpoint_file(str(path))['meta']
    assert type(loaded['seed']) is np.int64 and loaded['seed'] == 1234
    assert loaded['mean'].dtype == np.float32
    np.testing.assert_array_equal(loaded['mean'], meta['mean'])
    assert loaded['scale'] == 0.1 and loaded['classes'] == ('a', 'b')


def test_numpy1_module_names_load(tmp_path):
    """numpy 1.x pickles reference ``numpy.core.multiarray``; rewrite a numpy 2 pickle's module
    names to check both spellings resolve."""
    path = tmp_path / 'np1.pth'
    torch.save({'x': np.arange(3), 's': np.float32(2.5)}, path,
               _use_new_zipfile_serialization=False)  # one plain pickle stream, editable
    data = path.read_bytes()
    assert b'numpy._core.multiarray' in data
    path.write_bytes(data.replace(b'numpy._core.multiarray', b'numpy.core.multiarray'))
    loaded = load_checkpoint_file(str(path))
    np.testing.assert_array_equal(loaded['x'], np.arange(3))
    assert loaded['s'] == np.float32(2.5)


def test_old_mmengine_history_buffers_load_without_getattr(tmp_path):
    """A message hub pickled by mmengine (before the plain format): HistoryBuffer instances whose
    statistics methods pickle as getattr(HistoryBuffer, 'mean') etc."""
    buffer = HistoryBuffer([1.0, 2.0, 4.0], [1, 1, 2], max_length=10)
    hub = {'log_scalars': OrderedDict([('train/loss', buffer)]),
           'runtime_info': OrderedDict([('epoch', 3), ('best', np.float64(0.5))]),
           'resumed_keys': OrderedDict([('train/loss', True), ('epoch', True)])}
    path = tmp_path / 'old.pth'
    torch.save({'meta': {'epoch': 3}, 'state_dict': {'w': torch.ones(1)}, 'message_hub': hub},
               path)
    with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
        torch.load(path, weights_only=True)
    from greenmim_mm.checkpoint.numpy_values import pickle_globals as _numpy_globals
    with pytest.raises(pickle.UnpicklingError, match='getattr'):  # what the old allow-list needed
        with torch.serialization.safe_globals([HistoryBuffer] + _numpy_globals()):
            torch.load(path, weights_only=True)
    loaded = load_checkpoint_file(str(path))['message_hub']
    restored = loaded['log_scalars']['train/loss']
    assert type(restored) is HistoryBuffer and restored.max_length == 10
    np.testing.assert_array_equal(restored.data[0], [1.0, 2.0, 4.0])
    np.testing.assert_array_equal(restored.data[1], [1, 1, 2])
    assert restored.mean() == pytest.approx(7 / 4) and restored.current() == 4.0
    assert loaded['runtime_info']['best'] == 0.5


def test_upgrade_tool_rewrites_a_trusted_file_in_the_plain_format(tmp_path):
    """A file the safe loader refuses (an mmengine ConfigDict in meta) but its owner trusts."""
    from mmengine.config import ConfigDict
    path = tmp_path / 'mine.pth'
    torch.save({'state_dict': {'w': torch.ones(2)},
                'meta': {'cfg': ConfigDict(lr=0.1), 'seed': np.int64(7)}}, path)
    with pytest.raises(UnsafeCheckpointError, match='mmengine.config.config.ConfigDict'):
        load_checkpoint_file(str(path))
    assert run_tool('tools/upgrade_checkpoint.py', '--trust', path, path) == (
        f'upgrade_checkpoint: error: output {path} is the input file {path}; choose another path')
    out = tmp_path / 'plain.pth'
    assert run_tool('tools/upgrade_checkpoint.py', '--trust', path, out) == 0
    torch.load(out, weights_only=True)  # no allow-list
    loaded = load_checkpoint_file(str(out))
    assert loaded['meta'] == {'cfg': {'lr': 0.1}, 'seed': 7}
    assert type(loaded['meta']['seed']) is np.int64
    assert torch.equal(loaded['state_dict']['w'], torch.ones(2))

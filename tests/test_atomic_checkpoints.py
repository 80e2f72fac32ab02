"""Issue 9.2 and 9.3: no checkpoint lost when a save is interrupted; the converter never destroys
its input or an existing output."""
import errno
import os
import os.path as osp
import re
import resource
import signal
import subprocess
import sys

import pytest
import torch

import greenmim_mm  # noqa: F401
from greenmim_mm.checkpoint import atomic_files as fileio

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PRETRAIN_DEMO = osp.join(ROOT, 'configs/pretrain/greenmim_swin-nano_demo_128px.py')
KILLER = osp.join(ROOT, 'tests/scripts/train_killed_at_save.py')
CKPT_NAME = re.compile(r'^(epoch|iter)_\d+\.pth$')


@pytest.fixture(scope='module')
def tiny_demo(demo_data_factory):
    return demo_data_factory('atomic_data', train_per_class=1, val_per_class=1)


def python(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def train_args(work_dir, data, max_keep, *extra):
    return [PRETRAIN_DEMO, '--work-dir', str(work_dir), *extra, '--cfg-options',
            'train_cfg.max_epochs=4', 'train_dataloader.batch_size=5',
            f'train_dataloader.dataset.data_root={data}/',
            f'default_hooks.checkpoint.max_keep_ckpts={max_keep}']


def checkpoint_files(work_dir):
    return sorted(n for n in os.listdir(work_dir) if CKPT_NAME.match(n))


@pytest.mark.parametrize('max_keep', [1, 2])
def test_kill_during_save_then_resume(tmp_path, tiny_demo, max_keep):
    """SIGKILL while epoch_3's checkpoint is being written; ``--resume`` continues from epoch 2
    and no partial file sits under a checkpoint name."""
    work = tmp_path / 'work'
    killed = python(KILLER, 'epoch_3.pth', '--', *train_args(work, tiny_demo, max_keep))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    names = checkpoint_files(work)
    assert names == ['epoch_1.pth', 'epoch_2.pth'][-max_keep:]
    for name in names:  # complete files only, each loadable with no allow-list
        assert torch.load(work / name, weights_only=True)['meta']['epoch'] == int(name[6:-4])
    assert (work / 'last_checkpoint').read_text() == str(work / 'epoch_2.pth')
    assert len(fileio.partial_files(str(work))) == 1  # the interrupted write, not a ckpt name

    from test_checkpoint_loading import run_tool
    logs_before = set(work.glob('*/*.log'))
    assert run_tool('tools/train.py', *train_args(work, tiny_demo, max_keep, '--resume')) == 0
    log, = [p.read_text() for p in set(work.glob('*/*.log')) - logs_before]
    assert f'Auto resumed from the latest checkpoint {work}/epoch_2.pth' in log
    assert 'resumed epoch: 2, iter: 2' in log and 'Epoch(train) [3][1/1]' in log
    assert checkpoint_files(work) == ['epoch_3.pth', 'epoch_4.pth'][-max_keep:]
    assert fileio.partial_files(str(work)) == []  # removed when training started
    assert torch.load(work / 'epoch_4.pth', weights_only=True)['meta']['epoch'] == 4


def test_old_checkpoints_removed_only_after_the_new_one(tmp_path, monkeypatch):
    """A save that fails (here: the disk fills up) leaves the previous checkpoints and
    ``last_checkpoint`` as they were, also for the best checkpoint."""
    from test_checkpoint_format import toy_runner
    runner = toy_runner(tmp_path, 3, False)
    hook = next(h for h in runner.hooks if type(h).__name__ == 'SafeCheckpointHook')
    hook.max_keep_ckpts = 1
    real_write = fileio.atomic_write

    def fail_epoch_3(path, write):
        if osp.basename(path) == 'epoch_3.pth':
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real_write(path, write)

    monkeypatch.setattr(fileio, 'atomic_write', fail_epoch_3)
    with pytest.raises(OSError, match='No space left'):
        runner.train()
    assert checkpoint_files(tmp_path) == ['epoch_2.pth']
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'epoch_2.pth')
    assert fileio.partial_files(str(tmp_path)) == []


def test_previous_best_checkpoint_kept_until_the_new_best_is_saved(tmp_path, monkeypatch):
    from test_checkpoint_format import toy_runner
    runner = toy_runner(tmp_path, 1, False)
    runner.train()
    hook = next(h for h in runner.hooks if type(h).__name__ == 'SafeCheckpointHook')
    hook.save_best, hook.key_indicators, hook.rules = 'acc', ['acc'], ['greater']
    hook.is_better_than = {'acc': lambda a, b: a > b}
    hook.best_ckpt_path = None
    hook._save_best_checkpoint(runner, {'acc': 0.5})
    first_best = hook.best_ckpt_path
    assert osp.basename(first_best) == 'best_acc_epoch_1.pth' and osp.isfile(first_best)
    runner.train_loop._epoch += 1
    hook._save_best_checkpoint(runner, {'acc': 0.6})
    second_best = hook.best_ckpt_path
    assert not osp.exists(first_best) and osp.isfile(second_best)
    torch.load(second_best, weights_only=True)

    def full_disk(path, write):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(fileio, 'atomic_write', full_disk)
    runner.train_loop._epoch += 1
    with pytest.raises(OSError, match='No space left'):
        hook._save_best_checkpoint(runner, {'acc': 0.9})
    assert osp.isfile(second_best)  # mmengine's hook removes it before saving the new one


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / 'f.bin'
    fileio.atomic_write_bytes(path, b'old')

    def half_then_fail(f):
        f.write(b'new, half')
        raise OSError(errno.ENOSPC, 'No space left on device')

    with pytest.raises(OSError, match='No space left'):
        fileio.atomic_write(path, half_then_fail)
    assert path.read_bytes() == b'old' and os.listdir(tmp_path) == ['f.bin']
    fileio.atomic_write_bytes(path, b'new')
    assert path.read_bytes() == b'new'
    assert (path.stat().st_mode & 0o777) == (0o666 & ~fileio._umask())


# ---------------------------------------------------------------------------- the converter
@pytest.fixture(scope='module')
def training_checkpoint(tmp_path_factory):
    """A greenmim_mm-style checkpoint of a nano GreenSwin (backbone.* + a decoder key)."""
    from greenmim_mm.models import GreenSwinTransformer
    backbone = GreenSwinTransformer(arch=dict(embed_dims=16, depths=[1, 1], num_heads=[1, 2]),
                                    img_size=32, window_size=4, out_indices=(1, ))
    sd = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    sd['neck.decoder.weight'] = torch.zeros(4, 4)
    path = tmp_path_factory.mktemp('conv') / 'train.pth'
    torch.save({'state_dict': sd, 'meta': {'epoch': 1}}, path)
    return path


def convert(*args):
    """tools/convert_checkpoint.py in this process: its exit code or error message."""
    from test_checkpoint_loading import run_tool
    return run_tool('tools/convert_checkpoint.py', '--src', 'greenmim_mm', *args)


def test_converter_refuses_to_overwrite_its_input(training_checkpoint, tmp_path):
    work = tmp_path / 'dir'
    work.mkdir()
    src = work / 'X.pth'
    src.write_bytes(training_checkpoint.read_bytes())
    original = src.read_bytes()
    os.symlink(src, tmp_path / 'link.pth')
    os.link(src, tmp_path / 'hard.pth')
    for out in (src, f'{work}/../dir/X.pth', tmp_path / 'link.pth', tmp_path / 'hard.pth'):
        assert convert(src, out) == (f'convert_checkpoint: error: output {out} is the input '
                                     f'file {src}: refusing to overwrite it; choose another '
                                     'output path')
        assert src.read_bytes() == original
    message = convert(tmp_path / 'link.pth', src)  # the input spelled through a symlink
    assert 'is the input file' in message and src.read_bytes() == original
    assert sorted(os.listdir(work)) == ['X.pth']


def test_converter_output_is_plain_and_atomic(training_checkpoint, tmp_path):
    out = tmp_path / 'out.pth'
    assert convert(training_checkpoint, out) == 0
    converted = torch.load(out, weights_only=True)  # no allow-list
    assert all(k.startswith('backbone.') for k in converted['state_dict'])
    assert os.listdir(tmp_path) == ['out.pth']


def _limit_file_size():
    """A disk that fills up mid-write: files may not grow beyond 64 kB (EFBIG instead of
    SIGXFSZ), so the converter's write fails part-way."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_converter_on_a_full_disk_keeps_the_existing_output(training_checkpoint, tmp_path):
    out = tmp_path / 'out.pth'
    out.write_bytes(b'previous output')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    result = subprocess.run(
        [sys.executable, 'tools/convert_checkpoint.py', '--src', 'greenmim_mm',
         str(training_checkpoint), str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
        preexec_fn=_limit_file_size, timeout=300)
    assert osp.getsize(training_checkpoint) > 64 * 1024  # the write really is cut short
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f'convert_checkpoint: error: cannot write {out}: File too large (errno 27); nothing '
        'was written, an existing out.pth is unchanged')
    assert out.read_bytes() == b'previous output'
    assert os.listdir(tmp_path) == ['out.pth']


def test_converter_enospc_message(training_checkpoint, tmp_path, monkeypatch):
    """ENOSPC (what a full disk raises) mid-write, in-process."""
    from greenmim_mm.converters import ConversionError, convert_file
    out = tmp_path / 'out.pth'
    out.write_bytes(b'previous output')
    real_write = fileio.atomic_write

    def full_disk(path, write):
        def half(f):
            f.write(b'x' * 1000)
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real_write(path, half)

    monkeypatch.setattr(fileio, 'atomic_write', full_disk)
    with pytest.raises(ConversionError) as err:
        convert_file(str(training_checkpoint), str(out), 'greenmim_mm')
    assert str(err.value) == (f'cannot write {out}: No space left on device (errno 28); nothing '
                              'was written, an existing out.pth is unchanged')
    assert out.read_bytes() == b'previous output' and os.listdir(tmp_path) == ['out.pth']

"""Issue 19 points 4, 5 and 6: one live run per work dir, strict ``load_from`` / ``--resume``,
and a "last good" checkpoint only from weights that train on finitely.

Toy runs (mmengine's Runner, a linear regression, 16 samples: one iteration per epoch with batch
16) keep these fast; the demo config covers ``tools/train.py``.
"""
import os
import os.path as osp
import re
import socket
import subprocess
import sys

import pytest
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner

import greenmim_mm  # noqa: F401
from greenmim_mm.engine import (CheckpointMismatchError, LearningRateOverflowError,
                                NonFiniteWeightsError, WorkDirBusyError)
from greenmim_mm.engine.checkpoint_hook import check_weights_in_range
from test_compat import ToyDataset

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CFG = osp.join(ROOT, 'configs', 'pretrain', 'greenmim_swin-nano_demo_128px.py')
TWINS_DEMO_CFG = osp.join(ROOT, 'configs', 'pretrain', 'greenmim_twins-nano_demo_128px.py')


class Toy(BaseModel):
    """y = mean(W·x + b) over ``width`` outputs (another width: another architecture)."""

    def __init__(self, width=1):
        super().__init__()
        self.linear = torch.nn.Linear(2, width)

    def forward(self, inputs, labels, mode='tensor'):
        out = self.linear(inputs).mean(-1)
        return dict(loss=((out - labels)**2).mean()) if mode == 'loss' else out


def toy_runner(work_dir, epochs=2, optimizer=None, width=1, name='', **kwargs):
    hook = kwargs.pop('hook', {})
    return Runner(
        model=Toy(width), work_dir=str(work_dir),
        train_dataloader=dict(dataset=ToyDataset(),
                              sampler=dict(type='DefaultSampler', shuffle=False), batch_size=16,
                              num_workers=0, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=optimizer or dict(type='SGD', lr=0.05)),
        train_cfg=dict(by_epoch=True, max_epochs=epochs),
        default_hooks=dict(checkpoint=dict(type='SafeCheckpointHook', interval=1, **hook)),
        randomness=dict(seed=0), default_scope='greenmim_mm',
        experiment_name=f'safety_{osp.basename(str(work_dir))}_{name}', **kwargs)


def holder(*code):
    """A second process running ``code`` (after importing greenmim_mm), which prints 'ready'
    and then waits for its stdin to close."""
    src = '\n'.join(['import sys', 'import greenmim_mm', *code, "print('ready', flush=True)",
                     'sys.stdin.read()'])
    proc = subprocess.Popen([sys.executable, '-c', src], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1'))
    assert proc.stdout.readline().strip() == 'ready'
    return proc


def release(proc):
    proc.stdin.close()
    proc.wait(timeout=60)


# ----------------------------------------------------------------------------- 4: one run per dir
def test_second_train_process_in_a_work_dir_refuses_naming_the_first(tmp_path):
    """Another process holds the work dir: tools/train.py exits 1 with one line naming that
    process, before writing anything; once it is gone the lock is free again."""
    work = tmp_path / 'work'
    first = holder('from greenmim_mm.engine.work_dir_lock import lock_work_dir',
                   f'lock_work_dir({str(work)!r})')
    try:
        run = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), DEMO_CFG,
                              '--work-dir', str(work)], capture_output=True, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=300)
        assert run.returncode == 1, run.stderr[-3000:]
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and 'Traceback' not in run.stderr, run.stderr[-3000:]
        assert lines[0].startswith('train: error: work dir ')
        assert f'in use by another run (pid {first.pid} on host {socket.gethostname()}' \
            in lines[0]
        assert sorted(os.listdir(work)) == ['.greenmim_mm.lock']  # nothing else written
        with pytest.raises(WorkDirBusyError, match=f'pid {first.pid} '):
            toy_runner(work, name='busy').train()  # a programmatic Runner: the hook's lock
    finally:
        release(first)
    toy_runner(work, epochs=1, name='free').train()  # the kernel released the dead holder's lock
    assert (work / 'epoch_1.pth').is_file()


@pytest.mark.parametrize('link', ['symlink', 'hardlink'])
def test_planted_lock_file_link_is_refused_and_never_written(tmp_path, link):
    """A work dir holding ``.greenmim_mm.lock`` as a link to another file (a shared or unpacked
    work dir): taking the lock truncated and overwrote that file ('pid N on host H'); now
    tools/train.py ends with one line naming the lock file and the file keeps its bytes."""
    from greenmim_mm.apis import launch
    from greenmim_mm.engine.work_dir_lock import LOCK_NAME
    work = tmp_path / 'work'
    work.mkdir()
    precious = work / 'epoch_3.pth' if link == 'hardlink' else tmp_path / 'notes.txt'
    precious.write_bytes(b'precious bytes')
    (os.symlink if link == 'symlink' else os.link)(precious, work / LOCK_NAME)
    with pytest.raises(SystemExit, match=rf'^train: error: lock file .*{LOCK_NAME} is a '
                       f'{"symlink" if link == "symlink" else "hard link"}.*remove it'):
        launch.main_train([DEMO_CFG, '--work-dir', str(work)])
    assert precious.read_bytes() == b'precious bytes'


def test_lock_is_released_although_a_forked_child_shares_it(tmp_path):
    """Data loader workers are forked while the lock is held and share it; after the run ends
    (or after its process dies) another run must get the work dir."""
    from greenmim_mm.engine.work_dir_lock import lock_work_dir, unlock_work_dir
    work = str(tmp_path / 'work')
    lock_work_dir(work)
    child = os.fork()
    if child == 0:  # a worker that outlives the run
        import time
        time.sleep(30)
        os._exit(0)
    try:
        unlock_work_dir(work)
        probe = subprocess.run(
            [sys.executable, '-c', 'from greenmim_mm.engine.work_dir_lock import lock_work_dir; '
             f'lock_work_dir({work!r})'], capture_output=True, text=True, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1'), timeout=120)
        assert probe.returncode == 0, probe.stderr[-2000:]
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)


def test_runs_of_other_work_dirs_sharing_an_out_dir_exclude_each_other(tmp_path):
    """Checkpoints go to ``<out_dir>/<work dir's name>``: runs in a/exp and b/exp with one
    ``out_dir`` both wrote out/exp/epoch_N.pth (the later overwrote the earlier's, with no lock
    taken there); now the second refuses, naming the first."""
    out = tmp_path / 'out'
    first = holder('from greenmim_mm.engine.work_dir_lock import lock_work_dir',
                   f'lock_work_dir({str(out / "exp")!r})')  # the first run's checkpoint dir
    try:
        second = toy_runner(tmp_path / 'b' / 'exp', epochs=1, name='shared_out',
                            hook=dict(out_dir=str(out)))
        with pytest.raises(WorkDirBusyError, match=rf'{out / "exp"} is in use by another run '
                           rf'\(pid {first.pid} '):
            second.train()
        assert not list((out / 'exp').glob('*.pth'))
    finally:
        release(first)
    toy_runner(tmp_path / 'c' / 'exp', epochs=1, name='free_out',
               hook=dict(out_dir=str(out))).train()
    assert (out / 'exp' / 'epoch_1.pth').is_file()


def test_start_up_sweep_removes_only_its_own_dead_temp_files(tmp_path):
    """A user file named like ``.X.Y.partial`` and a live writer's temporary file (e.g. a
    converter writing into the work dir) stay; a dead writer's temporary file goes."""
    from greenmim_mm.checkpoint.atomic_files import PARTIAL_TAG
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    writer = holder()
    work = tmp_path / 'work'
    work.mkdir()
    user = work / '.notes.v2.partial'
    live = work / f'.model.pth.{PARTIAL_TAG}-{writer.pid}-abcd1234.partial'
    stale = work / f'.epoch_3.pth.{PARTIAL_TAG}-{dead.pid}-abcd1234.partial'
    for path in (user, live, stale):
        path.write_bytes(b'data')
    try:
        toy_runner(work, epochs=1, name='sweep').train()
        assert user.read_bytes() == b'data' and live.read_bytes() == b'data'
        assert not stale.exists()
    finally:
        release(writer)


def test_atomic_writes_use_the_tagged_name_with_their_pid(tmp_path, monkeypatch):
    from greenmim_mm.checkpoint import atomic_files as fileio
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(fileio.os, 'replace', lambda a, b: (seen.append(a), real_replace(a, b)))
    fileio.atomic_write_text(tmp_path / 'x.txt', 'hello')
    name = osp.basename(seen[0])
    assert name.startswith(f'.x.txt.{fileio.PARTIAL_TAG}-{os.getpid()}-')
    assert name.endswith('.partial') and fileio.partial_files(str(tmp_path)) == []


# ----------------------------------------------------------------------------- 5: strict loading
def save_toy(path, width=1, drop=()):
    state = Toy(width).state_dict()
    for key in drop:
        state.pop(key)
    torch.save({'state_dict': state}, path)
    return str(path)


def test_load_from_another_architecture_is_refused_before_training(tmp_path):
    path = save_toy(tmp_path / 'wide.pth', width=3)
    runner = toy_runner(tmp_path / 'work', load_from=path, name='arch')
    with pytest.raises(CheckpointMismatchError,
                       match=r'wide\.pth does not fit the model \(Toy\): 2 mis-shaped: '
                       r'linear\.weight \(file \[3, 2\], model \[1, 2\]\)'):
        runner.train()
    assert not list((tmp_path / 'work').glob('*.pth')) and runner.iter == 0


def test_resume_missing_a_weight_names_it_and_partial_load_is_logged(tmp_path, caplog):
    path = save_toy(tmp_path / 'nobias.pth', drop=('linear.bias', ))
    resumed = toy_runner(tmp_path / 'a', load_from=path, resume=True, name='missing')
    with pytest.raises(CheckpointMismatchError, match=r'1 missing: linear\.bias\. Use a '
                       r'checkpoint .* --partial-load'):
        resumed.train()
    partial = toy_runner(tmp_path / 'b', epochs=1, load_from=path, name='partial',
                         hook=dict(strict_load=False))
    partial.train()
    log = ''.join(open(p).read() for p in (tmp_path / 'b').glob('*/*.log'))
    assert 'partial load (strict_load=False) from ' in log and '1 missing: linear.bias' in log


def test_resume_across_architectures_fails_before_the_optimizer(tmp_path):
    """Today's failure was late, in the optimizer: 'loaded state dict has a different number of
    parameter groups'; now the weights are refused first, naming the keys."""
    toy_runner(tmp_path / 'wide', epochs=1, width=3, name='w3').train()
    other = toy_runner(tmp_path / 'work', load_from=str(tmp_path / 'wide' / 'epoch_1.pth'),
                       resume=True, name='w2')
    with pytest.raises(CheckpointMismatchError, match=r'epoch_1\.pth does not fit the model'):
        other.train()


def test_train_tool_refuses_another_architectures_load_from_in_one_line(tmp_path,
                                                                        demo_data_factory):
    from mmengine.config import Config

    from greenmim_mm.apis import launch
    from greenmim_mm.registry import MODELS
    data = demo_data_factory('strict_load', train_per_class=1, val_per_class=1)
    twins = MODELS.build(Config.fromfile(TWINS_DEMO_CFG).model)
    path = tmp_path / 'twins.pth'
    torch.save({'state_dict': twins.state_dict()}, path)
    with pytest.raises(SystemExit, match=r'^train: error: .*twins\.pth does not fit the model '
                       r'\(GreenMIM\): 127 missing: .*; 142 not in the model: .*--partial-load'):
        launch.main_train([DEMO_CFG, '--work-dir', str(tmp_path / 'work'),
                           '--cfg-options', f'load_from={path}',
                           f'train_dataloader.dataset.data_root={data}'])
    assert not list((tmp_path / 'work').glob('*.pth'))


def test_partial_load_flag_sets_the_hook_option():
    from greenmim_mm.apis import launch
    cfg, _ = launch.configure_training(launch.parse_train_args([DEMO_CFG, '--partial-load']))
    assert cfg.default_hooks.checkpoint.strict_load is False
    cfg, _ = launch.configure_training(launch.parse_train_args([DEMO_CFG]))
    assert 'strict_load' not in cfg.default_hooks.checkpoint  # strict: the hook's default


# ----------------------------------------------------------------------------- 6: last good
def test_exploding_finite_weights_never_become_last_good(tmp_path):
    """SGD at lr 1e35, one iteration per epoch: epoch_1's weights are finite but huge; the next
    iteration's loss is inf. The run stops naming the lr and last_checkpoint never names
    epoch_1 (today it did, and --resume picked it)."""
    work = tmp_path / 'work'
    runner = toy_runner(work, epochs=3, optimizer=dict(type='SGD', lr=1e35), name='sgd')
    with pytest.raises(NonFiniteWeightsError, match=r'iteration 2, the first iteration from the '
                       r'weights of .*epoch_1\.pth.*lower the learning rate \(lr 1e\+35\)'):
        runner.train()
    weights = torch.load(work / 'epoch_1.pth', weights_only=True)['state_dict']
    peak = max(float(v.abs().max()) for v in weights.values())
    assert 1e30 < peak < float('inf')  # the repro: finite, exploding
    assert not (work / 'last_checkpoint').exists()


class InfLossToy(Toy):
    """Toy whose loss gets a detached +inf term: finite gradients and weights, non-finite loss
    (what fp16 AMP leaves when its loss scaler skips the step)."""

    def forward(self, inputs, labels, mode='tensor'):
        out = super().forward(inputs, labels, mode)
        if mode == 'loss':
            out['loss'] = out['loss'] + torch.tensor(float('inf'))
        return out


def test_checkpoint_after_a_non_finite_loss_is_not_written(tmp_path):
    work = tmp_path / 'work'
    runner = toy_runner(work, epochs=2, name='infloss')
    runner.model = InfLossToy()
    with pytest.raises(NonFiniteWeightsError, match=r'Non-finite loss \(loss\) at iteration 1, the '
                       r'last iteration before a save.*\(lr 0\.05\)'):
        runner.train()
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())
    assert not list(work.glob('*.pth')) and not (work / 'last_checkpoint').exists()


def test_demo_sgd_at_lr_1e38_names_the_lr_and_keeps_no_last_good(tmp_path, demo_data_factory):
    """The issue's repro on the GreenMIM demo: SGD at lr 1e38, one iteration per epoch.
    epoch_1.pth (finite, exploding weights) was saved and named by last_checkpoint; iteration 2
    stopped with a non-finite loss that did not name the lr."""
    from greenmim_mm.apis import launch
    from greenmim_mm.engine import NonFiniteLossError
    data = demo_data_factory('sgd_1e38', train_per_class=1, val_per_class=1)
    cfg = tmp_path / 'sgd.py'
    cfg.write_text(f"_base_ = [{DEMO_CFG!r}]\n"
                   "optim_wrapper = dict(_delete_=True, type='OptimWrapper', "
                   "optimizer=dict(type='SGD', lr=1e38))\n"
                   "param_scheduler = []\n"
                   "train_cfg = dict(max_epochs=3)\n"
                   f"train_dataloader = dict(batch_size=64, dataset=dict(data_root={data!r}))\n")
    work = tmp_path / 'work'
    with pytest.raises(NonFiniteLossError, match=r'iteration 2\b.*lr 1e\+38'):
        launch.main_train([str(cfg), '--work-dir', str(work)])
    weights = torch.load(work / 'epoch_1.pth', weights_only=True)['state_dict']
    peak = max(float(v.abs().max()) for v in weights.values() if v.is_floating_point())
    assert 1e30 < peak < float('inf')
    assert not (work / 'last_checkpoint').exists()


def test_last_checkpoint_follows_a_finite_next_iteration_and_the_end(tmp_path):
    work = tmp_path / 'work'
    toy_runner(work, epochs=2, name='ok', hook=dict(max_keep_ckpts=1)).train()
    assert (work / 'last_checkpoint').read_text() == str(work / 'epoch_2.pth')
    assert sorted(p.name for p in work.glob('*.pth')) == ['epoch_2.pth']


def test_lr_the_parameters_cannot_hold_is_one_error_before_the_first_step(tmp_path):
    """AdamW at lr 1e45 died inside torch: 'value cannot be converted to type float without
    overflow'."""
    runner = toy_runner(tmp_path / 'work', optimizer=dict(type='AdamW', lr=1e45), name='adamw')
    with pytest.raises(LearningRateOverflowError, match=r'learning rate 1e\+45 of parameter '
                       r'group 0 is not a finite torch.float32 value'):
        runner.train()
    assert runner.iter == 0 and not list((tmp_path / 'work').glob('*.pth'))


def test_train_tool_ends_an_overflowing_lr_with_one_line(tmp_path, demo_data_factory, capsys):
    """The issue's AdamW at lr 1e45 through tools/train.py's entry point on the GreenMIM demo:
    one line ``train: error: ...`` naming the lr and the setting to lower (it was a traceback,
    with the lr named twice), nothing trained."""
    from greenmim_mm.apis import launch
    data = demo_data_factory('adamw_1e45', train_per_class=1, val_per_class=1)
    with pytest.raises(SystemExit) as exit_info:
        launch.train_tool([DEMO_CFG, '--work-dir', str(tmp_path / 'work'), '--cfg-options',
                           'optim_wrapper.optimizer.lr=1e45',
                           f'train_dataloader.dataset.data_root={data}'])
    message = str(exit_info.value.code)
    assert '\n' not in message and message.count('(lr ') == 0, message
    assert re.fullmatch(r'train: error: learning rate 1e\+\d\d of parameter group 0 is not a '
                        r'finite torch\.float32 value .* Lower optim_wrapper\.optimizer\.lr\.',
                        message), message
    assert not list((tmp_path / 'work').glob('*.pth'))


@pytest.mark.parametrize('dtype,value,bad', [
    (torch.float16, 65504., False), (torch.float16, 65520., True),
    (torch.bfloat16, 3.395e38, False), (torch.bfloat16, 3.40e38, True),
    (torch.float32, 3.40e38, False)])
def test_weights_must_fit_the_training_dtype(dtype, value, bad):
    """Finite fp32 weights that the AMP dtype rounds to inf in the forward's cast (beyond its
    largest value by half a unit in the last place or more: fp16 65504 + 16, bf16 3.3895e38 +
    6.6e35) stop the save; the reference is torch's own cast."""
    state = {'a.weight': torch.tensor([1., -value]), 'a.count': torch.tensor([10**9])}
    assert torch.isfinite(state['a.weight']).all()
    assert bool(torch.isinf(state['a.weight'].to(dtype)).any()) == bad  # the reference
    if bad:
        with pytest.raises(NonFiniteWeightsError, match=rf'training dtype {dtype}.*a\.weight '
                           r'\(max \|w\| .*lower the learning rate \(lr 0\.1\)'):
            check_weights_in_range(state, {'a.weight'}, dtype, 5, 'lr 0.1')
    else:
        check_weights_in_range(state, {'a.weight'}, dtype, 5, 'lr 0.1')


def test_training_dtype_is_amps_cast_dtype():
    """mmengine's AmpOptimWrapper autocasts to ``cast_dtype`` (autocast's default when None:
    fp16 on CUDA, bf16 on the CPU); a plain OptimWrapper trains in fp32."""
    from types import SimpleNamespace

    from mmengine.optim import AmpOptimWrapper, OptimWrapper

    from greenmim_mm.engine.checkpoint_hook import training_dtype
    amp = AmpOptimWrapper.__new__(AmpOptimWrapper)  # its constructor needs a GPU
    amp.cast_dtype = torch.bfloat16
    assert training_dtype(SimpleNamespace(optim_wrapper=amp)) is torch.bfloat16
    amp.cast_dtype = None
    default = torch.get_autocast_dtype('cuda' if torch.cuda.is_available() else 'cpu')
    assert training_dtype(SimpleNamespace(optim_wrapper=amp)) is default
    plain = OptimWrapper.__new__(OptimWrapper)
    assert training_dtype(SimpleNamespace(optim_wrapper=plain)) is torch.float32

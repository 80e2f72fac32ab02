"""Issue 18 (review): LazyRuntimeInfoHook reads the step's losses only when the message hub is
read, and logs exactly what mmengine's RuntimeInfoHook logs; NonFiniteLossHook's
``interval='logger'`` reads its record on the same iterations.
"""
import glob
import itertools
import os.path as osp
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.hooks import Hook, LoggerHook
from mmengine.logging import MessageHub
from mmengine.model import BaseModel

from greenmim_mm.engine import LazyRuntimeInfoHook, NonFiniteLossError, NonFiniteLossHook
from greenmim_mm.engine.sync_audit import SyncAudit

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
RUNS = itertools.count()


def fake_runner(interval, iters_per_epoch):
    hub = MessageHub(f'lazy_{next(RUNS)}')
    return SimpleNamespace(hooks=[LoggerHook(interval=interval)], message_hub=hub,
                           train_dataloader=[None] * iters_per_epoch, iter=0, epoch=0,
                           work_dir='work')


def test_no_read_back_between_logging_iterations():
    """Logger interval 4, 10 iterations per epoch: the losses (meta tensors) are read only
    after iterations 4, 8 and 10 (the LoggerHook's logging iterations), once each, all pending
    iterations in one read; the message hub gets Python numbers, every iteration's."""
    runner = fake_runner(interval=4, iters_per_epoch=10)
    hook = LazyRuntimeInfoHook()
    reads = []
    for i in range(10):
        runner.iter = i
        loss = torch.ones((), device='meta')
        with SyncAudit() as audit:
            hook.after_train_iter(runner, i, outputs=dict(loss=loss, loss_0=loss * 2))
        reads.append([e.kind for e in audit.events])
    assert reads == [[], [], [], ['read_back'], [], [], [], ['read_back'], [], ['read_back']]
    history = runner.message_hub.get_scalar('train/loss_0').data[0]
    assert history.tolist() == [1.0] * 10   # the audit's stand-in value, one per iteration


def test_pending_values_reach_the_hub_before_checkpoints_validation_and_epoch_end():
    runner = fake_runner(interval=100, iters_per_epoch=50)
    hook = LazyRuntimeInfoHook()
    hub = runner.message_hub
    for i, v in enumerate([1.5, 2.5]):
        hook.after_train_iter(runner, i, outputs=dict(loss=torch.tensor(v)))
    assert 'train/loss' not in hub.log_scalars
    checkpoint = dict(message_hub=hub.state_dict())
    hook.before_save_checkpoint(runner, checkpoint)
    assert checkpoint['message_hub']['log_scalars']['train/loss'].data[0].tolist() == [1.5, 2.5]
    hook.after_train_iter(runner, 2, outputs=dict(loss=torch.tensor(3.5)))
    hub.update_info('loop_stage', 'train')
    hook.before_val(runner)
    assert hub.get_scalar('train/loss').data[0].tolist() == [1.5, 2.5, 3.5]
    hook.after_train_iter(runner, 3, outputs=dict(loss=torch.tensor(4.5)))
    hook.after_train_epoch(runner)
    assert hub.get_scalar('train/loss').current() == 4.5
    with pytest.raises(ValueError, match="'loss' has 2 elements"):
        hook.after_train_iter(runner, 4, outputs=dict(loss=torch.ones(2)))


def test_types_and_values_are_those_of_item():
    """Several dtypes, a Python number, bf16: the hub holds what .item() gives."""
    from greenmim_mm.engine.lazy_runtime_info import read_scalars
    pending = [dict(a=torch.tensor(0.1), b=torch.tensor(3),
                    c=torch.tensor(0.3, dtype=torch.bfloat16), d=2.0,
                    e=torch.tensor([0.7], dtype=torch.float64))]
    got = read_scalars(pending)[0]
    want = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in pending[0].items()}
    assert got == want and [type(v) for v in got.values()] == [type(v) for v in want.values()]


# ------------------------------------------------------------------ through a real Runner
class TwoLosses(BaseModel):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, 3))

    def forward(self, inputs, data_samples=None, mode='loss'):
        return dict(loss_0=(self.w * inputs).sum().square() * 1e-3,
                    loss_1=(self.w - inputs).abs().mean(), acc=self.w.sum().detach())


def run(work_dir, runtime_info, item_calls):
    from mmengine.runner import Runner
    runner = Runner(
        model=TwoLosses(), work_dir=str(work_dir), experiment_name=f'lazy_{next(RUNS)}',
        train_dataloader=dict(dataset=[dict(inputs=torch.full((3, ), 0.3 * i)) for i in range(7)],
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate'), batch_size=1),
        train_cfg=dict(by_epoch=True, max_epochs=2),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05)),
        default_hooks=dict(runtime_info=runtime_info,
                           logger=dict(type='LoggerHook', interval=3),
                           checkpoint=dict(type='CheckpointHook', interval=4, by_epoch=False)),
        log_processor=dict(window_size=2),
        default_scope='greenmim_mm')
    calls = item_calls.setdefault(runtime_info['type'], [])

    class Probe(Hook):   # the .item() / .tolist() calls of every iteration
        priority = 'LOWEST'

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            self.start = Count.n

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            calls.append(Count.n - self.start)
    runner.register_hook(Probe())
    runner.train()
    return runner


class Count:
    n = 0


def lines(work_dir):
    [log] = glob.glob(str(work_dir / '*' / '*.log'))
    return [re.sub(r'(time|eta|data_time|memory): \S+', '', x.split(' - ', 1)[-1])
            for x in open(log).read().splitlines() if 'loss' in x and 'Epoch(train)' in x]


def test_runner_logs_what_mmengine_logs_without_per_iteration_reads(tmp_path, monkeypatch):
    """Two epochs of 7 iterations, logger interval 3 (logs after 3 and 6 of each epoch; the
    hooks also flush after 7, the epoch's end), checkpoints every 4 iterations (mid-epoch):
    the message hub histories, the log lines and the checkpoints' message hubs of the lazy hook
    equal mmengine's RuntimeInfoHook's. mmengine's hook reads every output every iteration
    (.item()); the lazy one reads once (.tolist()) on the logging, epoch-end and saving
    iterations, and not at all on the others."""
    item = torch.Tensor.item

    def counted(self):
        Count.n += 1
        return item(self)
    monkeypatch.setattr(torch.Tensor, 'item', counted)
    tolist = torch.Tensor.tolist

    def counted_list(self):
        Count.n += 1
        return tolist(self)
    monkeypatch.setattr(torch.Tensor, 'tolist', counted_list)
    calls = {}
    ref = run(tmp_path / 'ref', dict(type='RuntimeInfoHook'), calls)
    lazy = run(tmp_path / 'lazy', dict(type='LazyRuntimeInfoHook'), calls)
    assert type(lazy.hooks[0]) is LazyRuntimeInfoHook
    ref_scalars, lazy_scalars = ref.message_hub.log_scalars, lazy.message_hub.log_scalars
    assert set(ref_scalars) == set(lazy_scalars) >= {'train/loss', 'train/loss_0', 'train/acc'}
    for key in ref_scalars:
        if key.startswith('train/') and key not in ('train/time', 'train/data_time'):
            assert ref_scalars[key].data[0].tolist() == lazy_scalars[key].data[0].tolist(), key
    assert lines(tmp_path / 'ref') == lines(tmp_path / 'lazy') and len(lines(tmp_path / 'ref')) == 4
    for step in (4, 8, 12):
        saved = [torch.load(tmp_path / run_ / f'iter_{step}.pth', weights_only=False)
                 ['message_hub']['log_scalars']['train/loss_1'].data[0].tolist()
                 for run_ in ('ref', 'lazy')]
        assert saved[0] == saved[1] and len(saved[0]) == step
    # 0-based iterations after which the logger logs, and those that save a checkpoint
    logging, saving = {2, 5, 6, 9, 12, 13}, {3, 7, 11}
    assert all(calls['RuntimeInfoHook'][i] >= 4 for i in range(14))   # 4 outputs: 4 .item()
    assert {i: n for i, n in enumerate(calls['LazyRuntimeInfoHook']) if n} == \
        {i: 1 for i in logging | saving}


# ------------------------------------------------------------------ the non-finite check
def test_non_finite_check_reads_on_the_logging_iterations():
    """interval='logger': no read on other iterations (meta audit); a NaN at iteration 2 is
    reported at the next logging iteration (4), naming iteration 2."""
    runner = fake_runner(interval=4, iters_per_epoch=10)
    hook = NonFiniteLossHook(interval='logger')
    for i in range(3):
        runner.iter = i
        with SyncAudit() as audit:
            hook.after_train_iter(runner, i, outputs=dict(loss=torch.ones((), device='meta')))
        assert audit.events == [], audit.summary()
    cpu = NonFiniteLossHook(interval='logger')
    for i in range(3):
        runner.iter = i
        cpu.after_train_iter(runner, i, outputs=dict(loss=torch.tensor(float('nan') if i == 1
                                                                       else 1.0)))
    runner.iter = 3
    with pytest.raises(NonFiniteLossError, match=r'iteration 2 \(epoch 1, batch 2 .*loss=nan'):
        cpu.after_train_iter(runner, 3, outputs=dict(loss=torch.tensor(1.0)))
    with pytest.raises(ValueError, match="positive int or 'logger'"):
        NonFiniteLossHook(interval='sometimes')


@pytest.mark.parametrize('name', [
    '_base_/greenmim_pretrain_in1k-224px_800e', 'greenmim_swin-nano_demo_128px',
    'localmim_twins-nano_demo_128px', 'localmim_vit-base-p16_8xb256-amp-1600e_in1k-224px_hog'])
def test_pretrain_configs_use_the_lazy_hooks(name):
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain', f'{name}.py'))
    assert cfg.default_hooks.runtime_info.type == 'LazyRuntimeInfoHook'
    [check] = [h for h in cfg.custom_hooks if h.type == 'NonFiniteLossHook']
    assert check.interval == 'logger'


def test_logged_values_survive_reuse_of_the_step_output_memory():
    """Compiled steps with CUDA graphs (``mode='reduce-overhead'``, or ``'max-autotune'`` on a
    GPU) write every replay's outputs into the same memory: the values the lazy hook logs later
    must be those of their own iteration, not of whatever the buffer holds at the read."""
    runner = fake_runner(interval=3, iters_per_epoch=10)
    hook = LazyRuntimeInfoHook()
    buffer = torch.zeros(())   # the step's output memory, reused by every iteration
    for i in range(3):
        runner.iter = i
        buffer.fill_(float(i) + 0.5)
        hook.after_train_iter(runner, i, outputs=dict(loss=buffer))
    assert runner.message_hub.get_scalar('train/loss').data[0].tolist() == [0.5, 1.5, 2.5]

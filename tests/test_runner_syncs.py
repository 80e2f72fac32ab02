"""Issue 18 item 2 (review r18): a whole training iteration through mmengine's ``Runner`` with
a pre-training config's hooks (``LazyRuntimeInfoHook``, ``IterTimerHook``, ``LoggerHook``,
``ParamSchedulerHook``, ``SafeCheckpointHook``, ``NonFiniteLossHook(interval='logger')``,
``SkippedSamplesHook``) and the ImageNet recipes' optimizer wrapper (``AutocastOptimWrapper``,
bf16) reads nothing from the device on the iterations that do not log; ``test_step_syncs``
audits the model step alone.

The run is on the ``meta`` device under ``SyncAudit``: the model is moved there after the
runner is built, and the loader's batches are declared pinned, as ``pin_memory=True`` makes
them on a GPU machine. A probe hook (lowest priority: after every other hook of the
iteration) marks the iteration boundaries and stops the run before the first logging
iteration, whose read-back (and the stand-in values the audit gives it) is expected.
"""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook

from greenmim_mm.engine.sync_audit import SyncAudit, declare_pinned

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ITERS = 4   # the demo data below has 5 iterations per epoch: none of 0..3 ends an epoch
IMAGENET = '_base_/greenmim_pretrain_in1k-224px_800e'


class Stop(Exception):
    pass


class Probe(Hook):
    """The number of audit events before each iteration; stops after ``ITERS`` iterations."""

    priority = 'LOWEST'

    def __init__(self, audit):
        self.audit, self.marks = audit, []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.marks.append(len(self.audit.events))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == ITERS:
            self.marks.append(len(self.audit.events))
            raise Stop


def pinned_collate(collate):
    def collate_pinned(batch):
        data = collate(batch)
        inputs = data['inputs']   # default_collate stacks the images into one tensor
        for t in [inputs] if isinstance(inputs, torch.Tensor) else inputs:
            declare_pinned(t)
        return data
    return collate_pinned


def audited_run(name, data, work_dir, runtime_info=None, clip_grad=None):
    """The audit events of each of the first ``ITERS`` iterations of a run of the demo config
    ``name`` with the ImageNet recipe's hooks and optimizer wrapper (``runtime_info``: another
    ``default_hooks.runtime_info``; ``clip_grad``: the optimizer wrapper's)."""
    from mmengine.runner import Runner
    from mmengine.runner.loops import _InfiniteDataloaderIterator
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain', f'{name}.py'))
    imagenet = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain', f'{IMAGENET}.py'))
    # the demo's hooks are the ImageNet recipe's (other intervals): run with the recipe's
    assert {k: h.type for k, h in cfg.default_hooks.items()} == \
        {k: h.type for k, h in imagenet.default_hooks.items()}
    assert [h.type for h in cfg.custom_hooks] == [h.type for h in imagenet.custom_hooks]
    cfg.default_hooks = imagenet.default_hooks
    if runtime_info is not None:
        cfg.default_hooks.runtime_info = runtime_info
    cfg.custom_hooks = imagenet.custom_hooks
    cfg.optim_wrapper = imagenet.optim_wrapper
    cfg.optim_wrapper.paramwise_cfg = None
    cfg.optim_wrapper.clip_grad = clip_grad
    cfg.auto_scale_lr = None
    cfg.work_dir = str(work_dir)
    cfg.train_dataloader.dataset.data_root = data + '/'
    cfg.train_dataloader.batch_size = 2
    cfg.train_dataloader.num_workers = 0
    cfg.train_dataloader.persistent_workers = False
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=100)
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0,
                                end=10)]
    runner = Runner.from_cfg(cfg)
    loop = runner.train_loop   # its iterator is made when the loop is built: make it again
    assert len(loop.dataloader) == 5
    loop.dataloader.collate_fn = pinned_collate(loop.dataloader.collate_fn)
    loop.dataloader_iterator = _InfiniteDataloaderIterator(loop.dataloader)
    runner.model.to('meta')
    with SyncAudit() as audit:
        probe = Probe(audit)
        runner.register_hook(probe)
        with pytest.raises(Stop):
            runner.train()
    assert type(runner.optim_wrapper).__name__ == 'AutocastOptimWrapper'
    assert len(probe.marks) == ITERS + 1
    return [audit.events[a:b] for a, b in zip(probe.marks, probe.marks[1:])]


@pytest.mark.parametrize('name', ['greenmim_swin-nano_demo_128px',
                                  'localmim_twins-nano_demo_128px'])
def test_runner_iterations_read_nothing_between_logging_iterations(name, demo_data_factory,
                                                                   tmp_path):
    """Iteration 0 fills first-use caches; iterations 1..3 (steady, not logging: the recipe's
    logger interval is 100, the epoch has 5) have no event."""
    data = demo_data_factory('runner_syncs', train_per_class=2, val_per_class=1)
    per_iteration = audited_run(name, data, tmp_path)
    assert per_iteration[1:] == [[]] * (ITERS - 1), per_iteration


@pytest.mark.parametrize('change', ['runtime_info', 'clip_grad'])
def test_the_runner_audit_sees_per_iteration_reads(change, demo_data_factory, tmp_path):
    """Positive controls of the audit above: mmengine's RuntimeInfoHook reads the loss every
    iteration (its update_scalar's .item()); gradient clipping reads the gradient norm every
    iteration (mmengine's OptimWrapper logs float(norm)), which is why the pre-training configs
    do not clip (docs/gpu.md)."""
    data = demo_data_factory('runner_syncs_ref', train_per_class=2, val_per_class=1)
    kw = dict(runtime_info=dict(type='RuntimeInfoHook')) if change == 'runtime_info' else \
        dict(clip_grad=dict(max_norm=1.0))
    per_iteration = audited_run('greenmim_swin-nano_demo_128px', data, tmp_path, **kw)
    assert all([e.kind for e in events] == ['read_back'] for events in per_iteration[1:]), \
        per_iteration

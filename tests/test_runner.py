"""GreenRunner (tools/train.py's runner): auto_scale_lr counts gradient accumulation, the recipes'
``accumulation`` / ``batch_size`` overrides take effect, and ``--resume`` with another schedule
warns naming both and can take the config's (issue 20, items 6 and 7).

References: the README's rule lr = blr x (GPUs x batch x accumulation) / 256 written out; for
the schedule, the lrs of an uninterrupted run of the config's schedule (same process, same toy
model), compared exactly.
"""
import glob
import itertools
import logging
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper
from mmengine.registry import DefaultScope
from torch import nn

from greenmim_mm.apis import launch
from greenmim_mm.engine.runner import (GreenRunner, on_distinct_groups, replay,
                                       schedule_difference)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PRETRAIN = osp.join(ROOT, 'configs', 'pretrain')
SWIN_B = osp.join(PRETRAIN, 'greenmim_swin-base-w7_8xb256-amp-800e_in1k-224px.py')
SWIN_L = osp.join(PRETRAIN, 'localmim_swin-large-w14_8xb128-accu4-amp-800e_in1k-224px_hog.py')
DEMO = osp.join(PRETRAIN, 'greenmim_swin-nano_demo_128px.py')


@pytest.fixture(autouse=True)
def _fresh_scope():
    yield
    DefaultScope._instance_dict.clear()


# ----------------------------------------------------------------------------- auto_scale_lr
def recipe(config, *options):
    """The config as tools/train.py reads it with ``--cfg-options``."""
    args = launch.parse_train_args([config, '--cfg-options', *options] if options else [config])
    return launch.load_config(args)


def scaled_lr(cfg, world_size):
    """GreenRunner.scale_lr on ``world_size`` processes for the config's batch, accumulation and
    optimizer lr (a one-parameter optimizer: scaling is per group and the same for all)."""
    runner = object.__new__(GreenRunner)  # scale_lr reads only these
    runner._world_size = world_size
    runner._train_dataloader = cfg.train_dataloader
    runner.param_schedulers = cfg.param_scheduler
    runner.logger = MMLogger.get_instance('test_runner_scale_lr')
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=cfg.optim_wrapper.optimizer.lr)
    wrapper = OptimWrapper(opt, accumulative_counts=cfg.optim_wrapper.get('accumulative_counts',
                                                                          1))
    runner.scale_lr(wrapper, cfg.auto_scale_lr)
    return opt.param_groups[0]['lr']


def readme_lr(blr, gpus, batch, accumulation):
    return blr * gpus * batch * accumulation / 256


def test_swin_b_recipe_with_accumulation_gets_the_readme_lr():
    """The issue's case: 8 GPUs x 128 x accumulation 2 -> 8e-4 (mmengine's rule: 4e-4)."""
    cfg = recipe(SWIN_B, 'train_dataloader.batch_size=128', 'optim_wrapper.accumulative_counts=2')
    assert scaled_lr(cfg, 8) == pytest.approx(readme_lr(1e-4, 8, 128, 2), rel=1e-12)
    assert scaled_lr(cfg, 8) == pytest.approx(8e-4, rel=1e-12)
    plain = recipe(SWIN_B)  # 8 x 256, no accumulation: unchanged
    assert scaled_lr(plain, 8) == pytest.approx(8e-4, rel=1e-12)


@pytest.mark.parametrize('gpus,accumulation', [(8, 4), (16, 2), (32, 1)])
def test_localmim_swin_l_recipe_keeps_4096_images_and_its_lr(gpus, accumulation):
    """The recipe's ``accumulation`` variable overridden: it reaches the optimizer wrapper, and
    4096 images per update give 1.6e-3 on 8, 16 and 32 GPUs (was 2x / 4x too much)."""
    cfg = recipe(SWIN_L, f'accumulation={accumulation}')
    assert cfg.optim_wrapper.accumulative_counts == accumulation
    assert scaled_lr(cfg, gpus) == pytest.approx(readme_lr(1e-4, gpus, 128, accumulation),
                                                 rel=1e-12)
    assert scaled_lr(cfg, gpus) == pytest.approx(1.6e-3, rel=1e-12)


def test_recipe_variables_and_explicit_entries():
    cfg = recipe(SWIN_L, 'batch_size=64', 'accumulation=8')
    assert (cfg.train_dataloader.batch_size, cfg.optim_wrapper.accumulative_counts) == (64, 8)
    cfg = recipe(SWIN_L, 'accumulation=2', 'optim_wrapper.accumulative_counts=3')
    assert cfg.optim_wrapper.accumulative_counts == 3  # the explicit entry wins
    cfg = recipe(SWIN_B, 'accumulation=2')  # no such variable in this recipe: nothing fed
    assert cfg.optim_wrapper.get('accumulative_counts', 1) == 1


def test_train_logs_the_effective_batch_and_lr(demo_data_factory, tmp_path):
    """tools/train.py on the demo config with accumulation 2: one log line with the effective
    batch and the lr, and the optimizer's lr is blr x 10 / 256."""
    data = demo_data_factory('runner_data', train_per_class=1, val_per_class=1)
    work = tmp_path / 'work'
    runner = launch.main_train([DEMO, '--work-dir', str(work), '--cfg-options',
                                'train_cfg.max_epochs=1', 'train_dataloader.batch_size=5',
                                'optim_wrapper.accumulative_counts=2',
                                'auto_scale_lr.base_batch_size=256', 'auto_scale_lr.enable=True',
                                f'train_dataloader.dataset.data_root={data}/'])
    assert type(runner) is GreenRunner
    cfg = Config.fromfile(DEMO)
    [log] = glob.glob(str(work / '*' / '*.log'))
    blr = cfg.optim_wrapper.optimizer.lr
    line = next(x for x in open(log).read().splitlines() if 'auto_scale_lr:' in x)
    assert ('effective batch 10 images per optimizer step (1 GPUs x 5 per GPU x 2 accumulation '
            'steps), base batch 256') in line
    assert f'{blr:g} -> {blr * 10 / 256:g}' in line


# ----------------------------------------------------------------------------- resume schedule
RUNS = itertools.count()


class Toy(BaseModel):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, inputs, data_samples=None, mode='loss'):
        return dict(loss=(self.w * inputs).sum() ** 2 * 1e-3)


def cosine_schedule(epochs, warmup=1):
    return [dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=warmup,
                 convert_to_iter_based=True),
            dict(type='CosineAnnealingLR', T_max=epochs - warmup, eta_min=0.0, by_epoch=True,
                 begin=warmup, end=epochs, convert_to_iter_based=True)]


def toy_runner(work_dir, epochs, schedule_epochs, resume_from=None, policy=None):
    from mmengine.hooks import Hook

    class Record(Hook):
        lrs = []

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            Record.lrs.append(runner.optim_wrapper.optimizer.param_groups[0]['lr'])

    Record.lrs = []
    cfg = dict(resume_schedule=policy) if policy else {}
    runner = GreenRunner(
        model=Toy(), work_dir=str(work_dir), experiment_name=f'toy_{next(RUNS)}',
        train_dataloader=dict(dataset=[dict(inputs=torch.full((1,), float(i)))
                                       for i in range(6)],
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate'), batch_size=2),
        train_cfg=dict(by_epoch=True, max_epochs=epochs),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        param_scheduler=cosine_schedule(schedule_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=[Record()],
        resume=resume_from is not None, load_from=resume_from,
        default_scope='mmengine', cfg=cfg)
    runner.train()
    return runner, Record.lrs


def warnings_of(runner):
    handler_logs = []
    for h in runner.logger.handlers:
        if isinstance(h, logging.FileHandler):
            h.flush()
            handler_logs += [x for x in open(h.baseFilename).read().splitlines()
                             if 'WARNING' in x and '--resume' in x]
    return handler_logs


def test_resume_with_a_longer_schedule_warns_and_keeps_the_checkpoints(tmp_path):
    """The issue's case: 2 -> 4 epochs with the cosine end extended. mmengine's behaviour (the
    old schedule: the lr stays at the old cosine's end) is kept, with one warning naming both."""
    toy_runner(tmp_path / 'a', 2, 2)
    runner, lrs = toy_runner(tmp_path / 'a', 4, 4, str(tmp_path / 'a' / 'epoch_2.pth'))
    assert len(set(lrs)) == 1  # frozen
    [warning] = warnings_of(runner)
    assert "checkpoint CosineAnnealingLR(T_max=3, end=6)" in warning
    assert "config CosineAnnealingLR(T_max=9, end=12)" in warning
    assert '--resume-schedule config' in warning


def test_resume_taking_the_configs_schedule_equals_an_uninterrupted_run(tmp_path):
    _, uninterrupted = toy_runner(tmp_path / 'u', 4, 4)
    toy_runner(tmp_path / 'a', 2, 2)
    runner, lrs = toy_runner(tmp_path / 'a', 4, 4, str(tmp_path / 'a' / 'epoch_2.pth'),
                             policy='config')
    assert len(uninterrupted) == 12 and len(lrs) == 6
    assert lrs == uninterrupted[6:]  # exactly, iteration by iteration
    assert lrs[0] > 0.05  # annealing from well above the old end
    [warning] = warnings_of(runner)
    assert "taking the config's schedule" in warning and 'replayed to iteration 6' in warning


def test_resume_with_the_same_schedule_is_silent_and_exact(tmp_path):
    _, uninterrupted = toy_runner(tmp_path / 'u', 4, 4)
    toy_runner(tmp_path / 'a', 2, 4)
    runner, lrs = toy_runner(tmp_path / 'a', 4, 4, str(tmp_path / 'a' / 'epoch_2.pth'))
    assert lrs == uninterrupted[6:] and warnings_of(runner) == []


def test_schedule_difference_names_counts_and_fields():
    a = [dict(begin=0, end=6, T_max=6, last_step=3, base_values=[0.1])]
    assert schedule_difference(['CosineAnnealingLR'], a, [dict(a[0], last_step=5)]) == ''
    text = schedule_difference(['CosineAnnealingLR'], a, [dict(a[0], end=4), dict(a[0])])
    assert text.startswith('1 schedulers in the config, 2 in the checkpoint; scheduler 0: '
                           'checkpoint CosineAnnealingLR(end=4), config CosineAnnealingLR(end=6)')
    many = [dict(a[0], base_values=[0.1 * 0.9**i for i in range(300)])]
    text = schedule_difference(['LinearLR'], many, [dict(many[0], base_values=[0.2] * 300)])
    assert text == ('scheduler 0: checkpoint LinearLR(base_values=[0.2 .. 0.2] (300 groups)), '
                    f'config LinearLR(base_values=[{0.1 * 0.9**299:.6g} .. 0.1] (300 groups))')


def test_resume_schedule_option_reaches_the_config(tmp_path):
    ckpt = tmp_path / 'epoch_1.pth'
    ckpt.write_bytes(b'')
    args = launch.parse_train_args([DEMO, '--work-dir', str(tmp_path), '--resume', str(ckpt),
                                    '--resume-schedule', 'config'])
    cfg, _ = launch.configure_training(args)
    assert cfg.resume_schedule == 'config' and launch.train_runner_class(cfg) is GreenRunner
    with pytest.raises(SystemExit):
        launch.parse_train_args([DEMO, '--resume-schedule', 'newest'])
    cfg.runner_type = 'Runner'  # mmengine's, found through the registry
    from mmengine.runner import Runner
    assert launch.train_runner_class(cfg) is Runner
    cfg.runner_type = 'NoSuchRunner'
    with pytest.raises(KeyError, match="runner_type 'NoSuchRunner' is not a registered runner"):
        launch.train_runner_class(cfg)


def test_replay_on_distinct_groups_equals_stepping_every_group():
    """The fast replay (one copy per distinct group) leaves every group and scheduler exactly as
    stepping all of them: 60 groups (one per parameter, names differ), 3 distinct lrs."""
    from mmengine.optim.scheduler import CosineAnnealingLR, CosineAnnealingParamScheduler, LinearLR

    def build():
        params = [nn.Parameter(torch.zeros(1)) for _ in range(60)]
        opt = torch.optim.AdamW([dict(params=[p], lr=0.1 * 0.5**(i % 3), param_name=f'p{i}')
                                 for i, p in enumerate(params)], lr=0.1)
        return opt, [LinearLR(opt, start_factor=1e-3, begin=0, end=7, by_epoch=False),
                     CosineAnnealingLR(opt, T_max=30, begin=7, end=37, by_epoch=False),
                     CosineAnnealingParamScheduler(opt, 'weight_decay', T_max=5, begin=0, end=5,
                                                   by_epoch=True)]

    (opt_a, sched_a), (opt_b, sched_b) = build(), build()
    replay(sched_a, 23, 4)
    with on_distinct_groups(sched_b):
        replay(sched_b, 23, 4)
    assert [g['lr'] for g in opt_b.param_groups] == [g['lr'] for g in opt_a.param_groups]
    assert [g['weight_decay'] for g in opt_b.param_groups] == \
        [g['weight_decay'] for g in opt_a.param_groups]
    assert len({g['lr'] for g in opt_a.param_groups}) == 3
    for a, b in zip(sched_a, sched_b):
        assert b.optimizer is opt_b and a.state_dict() == b.state_dict()

"""mmengine's runner-level ``compile`` (issue 18 review, item 5) through a real Runner.

mmengine 0.10.7's ``Runner.train`` calls ``_maybe_compile('train_step')``: with ``cfg.compile``
(True or a dict of ``torch.compile`` options) it replaces ``model.train_step`` by
``torch.compile(model.train_step, **options)``. The whole train step (data preprocessor, loss,
backward, optimizer step) is then traced by dynamo; GreenMIM's host side (``plan_step``, under
``torch.compiler.disable``) must stay outside the graphs, no graph may be rebuilt when the mask
changes, and the losses must be the eager run's. ``backend='eager'`` keeps the test cheap (dynamo
traces, the captured graphs run op by op).
"""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook

from greenmim_mm.models.algorithms.greenmim import GreenMIM

ITERS = 8
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMOS = ['greenmim_swin-nano_demo_128px', 'localmim_swin-nano_demo_128px']


class Record(Hook):
    """Every iteration's loss (a Python number, read after the run's own hooks) and the number
    of distinct graphs dynamo has built so far."""

    priority = 'LOWEST'

    def __init__(self):
        self.losses, self.graphs = [], []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        from torch._dynamo.utils import counters
        self.losses.append(float(outputs['loss']))
        self.graphs.append(counters['stats']['unique_graphs'])


def run(name, work_dir, data_root, compile_cfg):
    from mmengine.runner import Runner
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain', f'{name}.py'))
    cfg.work_dir = str(work_dir)
    cfg.train_dataloader.dataset.data_root = data_root + '/'
    cfg.train_dataloader.batch_size = 2
    cfg.train_dataloader.num_workers = 0
    cfg.train_dataloader.persistent_workers = False
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=ITERS)
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = dict(type='SafeCheckpointHook', interval=100, save_last=False)
    cfg.model.backbone.attn_backend = 'sdpa'
    if compile_cfg is not None:
        cfg.compile = compile_cfg
    runner = Runner.from_cfg(cfg)
    record = Record()
    runner.register_hook(record)
    runner.train()
    return runner, record


@pytest.mark.parametrize('name', DEMOS)
def test_runner_compile_keeps_the_plan_outside_and_the_eager_losses(name, demo_data_factory,
                                                                     tmp_path, monkeypatch):
    data = demo_data_factory('runner_compile', train_per_class=1, val_per_class=1)
    tracing = []
    take = GreenMIM._take_plan

    def spy(self, img):
        tracing.append(torch.compiler.is_compiling())
        return take(self, img)
    monkeypatch.setattr(GreenMIM, '_take_plan', spy)
    torch._dynamo.reset()
    from torch._dynamo.utils import counters
    counters.clear()
    _, eager = run(name, tmp_path / 'eager', data, None)
    assert tracing == [False] * ITERS and eager.graphs == [0] * ITERS
    runner, compiled = run(name, tmp_path / 'compiled', data, dict(backend='eager'))
    assert type(runner.model.train_step).__name__ != 'method'   # compiled by the runner
    assert tracing[ITERS:] == [False] * ITERS   # the plan ran eagerly, outside every graph
    assert compiled.graphs[0] >= 1   # dynamo captured the step
    # The first two iterations also trace the optimizer step (per parameter group, AdamW's
    # state appears at step 1); from then on a new mask every iteration rebuilds no graph.
    assert len(set(compiled.graphs[2:])) == 1, compiled.graphs
    assert all(abs(a - b) <= 1e-5 * abs(b) for a, b in zip(compiled.losses, eager.losses)), \
        (compiled.losses, eager.losses)
    torch._dynamo.reset()

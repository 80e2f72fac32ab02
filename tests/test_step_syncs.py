"""Issue 18 items 2-3: no host-device synchronisation inside a training step, and the step's
plan (mask + geometry) built one step ahead and moved in one copy, with the same masks.

The step (forward + backward + AdamW) runs on the ``meta`` device under ``SyncAudit``, a
dispatch mode that records blocking host-to-device copies, device read-backs and data-dependent
ops (see greenmim_mm/engine/sync_audit.py); the host-side plan stays on the CPU.
"""
import os.path as osp
import threading

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import greenmim_mm  # noqa: F401
from greenmim_mm.engine.sync_audit import SyncAudit, declare_pinned
from greenmim_mm.models.algorithms import greenmim as greenmim_module
from greenmim_mm.models.algorithms import localmim_vit as vit_module
from greenmim_mm.models.algorithms.greenmim import draw_unit_mask
from greenmim_mm.models.algorithms.step_plan import pack_plan
from greenmim_mm.models.heads import CellReconstructionHead
from greenmim_mm.ops.masking import unit_grid
from greenmim_mm.registry import MODELS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMOS = ['greenmim_swin-nano_demo_128px', 'greenmim_twins-nano_demo_128px',
         'localmim_swin-nano_demo_128px', 'localmim_twins-nano_demo_128px']


def build_demo(name, device='meta', **kw):
    init_default_scope('greenmim_mm')
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain', f'{name}.py'))
    cfg.model.update(kw)
    torch.manual_seed(0)
    return MODELS.build(cfg.model).to(device).train(), 128


def build_vit(device='meta'):
    from test_localmim_vit import tiny_vit_localmim
    return tiny_vit_localmim(mask_seed=0).to(device).train(), 64


def make_step(model, size, device='meta'):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(2, 3, size, size, device=device)

    def step():
        losses = model.loss(x)
        loss = sum(v for k, v in losses.items() if 'loss' in k)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def audit_second_step(model, size):
    """The audit of one step after a warm-up step (first-use caches filled)."""
    step = make_step(model, size)
    with SyncAudit():
        step()
    with SyncAudit() as audit:
        step()
    return audit


@pytest.fixture(autouse=True)
def _rank0(monkeypatch):
    monkeypatch.setattr(greenmim_module, 'get_rank', lambda: 0)
    monkeypatch.setattr(vit_module, 'get_rank', lambda: 0)


@pytest.mark.parametrize('name', DEMOS + ['localmim_vit'])
def test_training_step_has_no_sync(name):
    model, size = build_vit() if name == 'localmim_vit' else build_demo(name)
    audit = audit_second_step(model, size)
    assert audit.events == [], audit.summary()


def _blocking_mask_copy(orig):
    def loss(self, pred, imgs, mask, cells=None):   # today's head: host_mask.to(device, dtype)
        host_mask = torch.zeros(mask.shape, dtype=torch.bool)
        host_mask.to(device=pred.device, dtype=torch.float32)
        return orig(self, pred, imgs, mask, cells)
    return loss


def _unpinned_copy(orig):
    def loss(self, pred, imgs, mask, cells=None):   # non_blocking, but from pageable memory
        torch.zeros(mask.shape).to(pred.device, non_blocking=True)
        return orig(self, pred, imgs, mask, cells)
    return loss


def _loss_read_back(orig):
    def loss(self, *a, **k):
        out = orig(self, *a, **k)
        float(out)                                   # NonFiniteLossHook's old float(loss)
        return out
    return loss


def _boolean_index(orig):
    def loss(self, pred, imgs, mask, cells=None):
        pred[pred > 0]                               # data-dependent shape
        return orig(self, pred, imgs, mask, cells)
    return loss


@pytest.mark.parametrize('plant,kind,op', [(_blocking_mask_copy, 'h2d_blocking', '_to_copy'),
                                           (_unpinned_copy, 'h2d_unpinned', '_to_copy'),
                                           (_loss_read_back, 'read_back', '_local_scalar_dense'),
                                           (_boolean_index, 'data_dependent', 'index')])
def test_audit_finds_a_planted_sync(monkeypatch, plant, kind, op):
    monkeypatch.setattr(CellReconstructionHead, 'loss', plant(CellReconstructionHead.loss))
    model, size = build_demo('greenmim_swin-nano_demo_128px')
    audit = audit_second_step(model, size)
    assert [(e.kind, e.op) for e in audit.events] == [(kind, op)], audit.summary()
    assert 'tests/test_step_syncs.py' in audit.events[0].where


def test_audit_ignores_host_only_work_and_pinned_non_blocking_copies():
    """Host-only work is no event; a non_blocking copy from a (view of a) buffer declared
    pinned is none either (the meta audit on a machine that cannot pin)."""
    with SyncAudit() as audit:
        a = torch.arange(6).view(2, 3)
        int(a.sum()), a[a > 2], a.tolist()                    # all on the host
        buffer = declare_pinned(torch.arange(12))
        b = buffer.to('meta', non_blocking=True)
        c = buffer[6:].view(2, 3).to('meta', non_blocking=True)
        (b.sum() + c.sum())
    assert audit.events == [], audit.summary()


def test_audit_flags_non_blocking_copies_from_pageable_memory():
    """non_blocking=True from unpinned memory is a blocking copy in reality (CUDA stages it):
    an 'h2d_unpinned' event, for .to() and copy_(); only is_pinned() counts for a CUDA
    target, where a declared but unpinned buffer is an event too."""
    from greenmim_mm.engine.sync_audit import _pinned
    dst = torch.empty(2, 3, device='meta')
    with SyncAudit() as audit:
        torch.arange(6).view(2, 3).to('meta', non_blocking=True)
        dst.copy_(torch.ones(2, 3), non_blocking=True)
    assert [(e.kind, e.op) for e in audit.events] == [('h2d_unpinned', '_to_copy'),
                                                      ('h2d_unpinned', 'copy_')]
    assert 'tests/test_step_syncs.py' in audit.events[0].where
    buffer = declare_pinned(torch.zeros(4))
    assert _pinned(buffer[1:], torch.device('meta'))
    assert not _pinned(buffer, torch.device('cuda'))
    assert not _pinned(torch.zeros(4), torch.device('meta'))
    with pytest.raises(ValueError, match='host buffer'):
        declare_pinned(torch.zeros(1, device='meta'))


# ------------------------------------------------------------------ the plan (item 3)
def _greenmim_cpu(**kw):
    model, size = build_demo('greenmim_swin-nano_demo_128px', device='cpu', mask_seed=5, **kw)
    return model, torch.randn(2, 3, size, size)


def test_mask_sequence_is_a_function_of_seed_rank_and_step():
    """Prefetched plans carry exactly the masks of draw_unit_mask(seed, rank, step)."""
    model, x = _greenmim_cpu()
    grid = unit_grid(x.shape[-2:], model.unit)
    for step in range(6):
        mask, plan = model.take_plan(x)
        assert torch.equal(mask, draw_unit_mask(grid, model.mask_ratio, 5, 0, step))
        assert int(model.mask_step) == step + 1
        ref = model.backbone.sparse_geometry(mask, x.shape[-2:], x.device)
        assert torch.equal(plan['geometry'][0].coords, ref[0].coords)
        assert torch.equal(plan['cells']['weight'], mask)


def test_next_plan_is_built_in_a_background_thread(monkeypatch):
    model, x = _greenmim_cpu()
    built = []
    orig = type(model).build_plan

    def spy(self, key):
        built.append((key[0], threading.current_thread() is threading.main_thread()))
        return orig(self, key)
    monkeypatch.setattr(type(model), 'build_plan', spy)
    for _ in range(3):
        model.take_plan(x)
    model._prefetcher._pending[1].result()   # wait for the last prefetch
    # step 0 on demand (main thread), steps 1..3 ahead of time in the prefetch thread
    assert built == [(0, True), (1, False), (2, False), (3, False)]


def test_prefetch_changes_nothing_and_resume_is_exact(monkeypatch):
    """Losses with and without prefetch agree bit for bit; a model restored at step 3 (a
    resume) continues with the uninterrupted run's masks and losses."""
    runs = {}
    for prefetch in (True, False):
        model, x = _greenmim_cpu(prefetch_plan=prefetch)
        step = make_step(model, 128, 'cpu')
        losses = []
        for i in range(5):
            if i == 3:
                state = {k: v.clone() for k, v in model.state_dict().items()}
            torch.manual_seed(i)   # drop path
            losses.append(step())
        runs[prefetch] = losses, state
    assert all(torch.equal(a, b) for a, b in zip(runs[True][0], runs[False][0]))
    model, x = _greenmim_cpu()
    step = make_step(model, 128, 'cpu')   # the same images as above (same seed)
    model.take_plan(x)   # a prefetch for step 1 is pending: the resume must drop it
    model.load_state_dict(runs[True][1])
    torch.manual_seed(3)
    assert torch.equal(step(), runs[True][0][3])   # weights and mask of step 3
    mask, _ = model.take_plan(x)
    assert torch.equal(mask, draw_unit_mask(mask.shape, model.mask_ratio, 5, 0, 4))
    assert int(model.mask_step) == 5


def test_pack_plan_round_trip_one_copy_and_sharing():
    shared = torch.arange(4)
    inner = dict(a=shared, b=torch.tensor([[True, False]]), c=3)
    plan = dict(x=torch.randn(3, 2).t(), same=[inner, inner], n=(torch.zeros(0), 'txt'))
    packed = pack_plan(plan, 'cpu')
    copies = []

    class Count(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
                copies.append(func)
            return func(*args, **(kwargs or {}))
    with Count():
        moved = packed.to('meta')
    assert len(copies) == 1
    back = packed.to('cpu')
    assert torch.equal(back['x'], plan['x']) and back['x'].is_contiguous()
    assert torch.equal(back['same'][0]['b'], inner['b']) and back['same'][0]['c'] == 3
    assert back['same'][0] is back['same'][1] and moved['same'][0] is moved['same'][1]
    assert moved['x'].device.type == 'meta' and moved['same'][0]['a'].dtype == torch.int64
    assert back['n'][0].shape == (0, ) and back['n'][1] == 'txt'
    with pytest.raises(TypeError, match='host tensors only'):
        pack_plan(dict(t=torch.zeros(2, device='meta')), 'meta')


# ------------------------------------------------------------------ around the step
def _runner(iteration):
    from types import SimpleNamespace
    return SimpleNamespace(iter=iteration, epoch=0, work_dir='work')


def test_non_finite_loss_hook_reads_the_device_every_interval_only():
    """Iteration 3's loss_1 is NaN; interval 5: iterations 1-4 read nothing from the device,
    iteration 5 reads the record once and raises naming iteration 3 and the term's value."""
    from greenmim_mm.engine import NonFiniteLossError, NonFiniteLossHook
    hook = NonFiniteLossHook(interval=5)
    for it in range(4):
        loss = torch.full((), float('nan') if it == 2 else 1.0, device='meta')
        with SyncAudit() as audit:
            hook.after_train_iter(_runner(it), it, outputs=dict(loss=loss, loss_1=loss))
        assert audit.events == [], audit.summary()
    cpu_hook = NonFiniteLossHook(interval=5)
    for it in range(4):
        value = float('nan') if it == 2 else 1.0
        outputs = dict(loss_0=torch.tensor(1.0), loss_1=torch.tensor(value),
                       acc=torch.tensor(value))
        cpu_hook.after_train_iter(_runner(it), it, outputs=outputs)   # no raise before iteration 5
    with pytest.raises(NonFiniteLossError,
                       match=r'iteration 3 \(epoch 1, batch 3 of the epoch\): loss_1=nan\. '
                             r'Training stopped \(found at iteration 5\)'):
        cpu_hook.after_train_iter(_runner(4), 4, outputs=dict(loss_0=torch.tensor(2.0)))


def test_non_finite_loss_hook_checks_before_every_checkpoint():
    from greenmim_mm.engine import NonFiniteLossError, NonFiniteLossHook
    hook = NonFiniteLossHook(interval=100)
    hook.after_train_iter(_runner(0), 0, outputs=dict(loss=torch.tensor(1.0)))
    hook.before_save_checkpoint(_runner(0), {})   # finite: nothing
    hook.after_train_iter(_runner(1), 1, outputs=dict(loss=torch.tensor(float('inf'))))
    with pytest.raises(NonFiniteLossError, match=r'iteration 2 .*loss=inf'):
        hook.before_save_checkpoint(_runner(1), {})
    with pytest.raises(NonFiniteLossError, match='iteration 2'):
        hook.after_train_epoch(_runner(1))
    with pytest.raises(ValueError, match='positive int'):
        NonFiniteLossHook(interval=0)


def test_pretrain_configs_use_bf16_autocast_without_a_scaler():
    """The pre-training wrapper: bf16 autocast, no GradScaler (it builds and steps on the CPU);
    fp16 is refused with the AmpOptimWrapper hint; the data preprocessor copies non-blocking
    from the loader's pinned memory."""
    from mmengine.optim import build_optim_wrapper
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain',
                                   'greenmim_swin-base-w7_8xb256-amp-800e_in1k-224px.py'))
    assert cfg.train_dataloader.pin_memory and cfg.data_preprocessor.non_blocking
    model = torch.nn.Linear(4, 2)
    init_default_scope('greenmim_mm')
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert type(wrapper).__name__ == 'AutocastOptimWrapper' and not hasattr(wrapper, 'loss_scaler')
    before = model.weight.detach().clone()
    with wrapper.optim_context(model):
        out = model(torch.randn(3, 4))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().square().mean())
    assert not torch.equal(before, model.weight)
    cfg.optim_wrapper.dtype = 'float16'
    with pytest.raises(ValueError, match='AmpOptimWrapper'):
        build_optim_wrapper(model, cfg.optim_wrapper)

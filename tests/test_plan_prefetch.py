"""Issue 18 item 3: the prefetched step plan (``step_plan``): exact against a plain build, no
build in flight when the process forks (DataLoader workers), the child not stuck on the
parent's prefetch, and the mask sequence unchanged across the fork.

References: ``GreenMIM.build_plan`` run on demand (no prefetch) and ``draw_unit_mask`` of
(seed, rank, step).
"""
import gc
import multiprocessing
import threading
import time
import weakref
from pathlib import Path

import pytest
import torch

from greenmim_mm.models.algorithms.greenmim import draw_unit_mask
from greenmim_mm.models.algorithms.step_plan import pack_plan
from test_step_syncs import build_demo

SEED = 5


def _model(**kw):
    model, size = build_demo('greenmim_swin-nano_demo_128px', device='cpu', mask_seed=SEED, **kw)
    return model, torch.randn(2, 3, size, size)


def _equal(a, b) -> bool:
    """Structural equality of two plans: same containers, equal tensors (dtype, shape, values)."""
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(a, b))
    if hasattr(a, '__dataclass_fields__'):
        return type(a) is type(b) and all(_equal(getattr(a, f), getattr(b, f))
                                          for f in a.__dataclass_fields__)
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(_equal(a[k], b[k])
                                                                   for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    return a == b


@pytest.mark.parametrize('backend', ['sdpa', 'flex'])
def test_prefetched_plans_equal_plans_built_on_demand(backend):
    """Every step's device plan through the prefetcher (packed, one buffer, views) equals the
    plan built directly from the mask, for both layouts."""
    model, x = _model(backbone=dict(attn_backend=backend))
    for step in range(4):
        mask, plan = model.plan_step(x)
        assert torch.equal(mask, draw_unit_mask(mask.shape, model.mask_ratio, SEED, 0, step))
        ref = dict(mask=mask, **model.plan_tensors(mask, x.shape[-2:], x.device))
        assert _equal(plan, ref)
        assert all(v.is_contiguous() for v in plan['cells'].values())
        assert all(t.data_ptr() % 16 == 0 for t in _tensors(plan))   # torch.compile's inputs


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if hasattr(obj, '__dataclass_fields__'):
        obj = [getattr(obj, f) for f in obj.__dataclass_fields__]
    elif isinstance(obj, dict):
        obj = list(obj.values())
    elif not isinstance(obj, (list, tuple)):
        return []
    return [t for child in obj for t in _tensors(child)]


def test_packed_views_are_typed_segments_of_one_buffer():
    plan = dict(a=torch.arange(5), b=torch.ones(2, 3, dtype=torch.bool),
                c=torch.arange(6, dtype=torch.int32).view(3, 2), d=torch.arange(3) * 7)
    packed = pack_plan(plan, 'cpu')
    back = packed.to('cpu')
    assert _equal(back, plan)
    ptr = packed.buffer.data_ptr()
    end = ptr + packed.buffer.numel()
    assert all(ptr <= v.data_ptr() < end for v in back.values())
    # the int64 tensors lie in one segment (one per dtype), each 16-byte aligned
    assert back['d'].data_ptr() == back['a'].data_ptr() + 6 * 8
    assert all(v.data_ptr() % 16 == 0 for v in back.values())


def _slow_background_builds(monkeypatch, model, seconds, finished):
    orig = type(model).build_plan

    def slow(self, key):
        background = threading.current_thread() is not threading.main_thread()
        if background:
            time.sleep(seconds)
        out = orig(self, key)
        if background:
            finished.set()
        return out
    monkeypatch.setattr(type(model), 'build_plan', slow)


def test_fork_waits_for_the_pending_build_and_the_child_is_not_stuck(monkeypatch):
    """A fork while the next step's plan is being built: the fork waits for the build (in the
    child it had finished), the child builds its own plans (the parent's worker thread does not
    exist there, so waiting on its prefetch would hang forever) with the same masks, and the
    parent goes on with the prefetched plan and the same mask sequence."""
    model, x = _model()
    finished = threading.Event()
    _slow_background_builds(monkeypatch, model, 0.5, finished)
    model.take_plan(x)             # step 0 on demand; step 1 now building (0.5 s)
    assert not finished.is_set()

    def child(out):
        ok = finished.is_set()     # state at the fork
        mask, _ = model.take_plan(x)
        out.put((ok, torch.equal(mask, draw_unit_mask(mask.shape, 0.75, SEED, 0, 1))))

    ctx = multiprocessing.get_context('fork')
    out = ctx.SimpleQueue()
    proc = ctx.Process(target=child, args=(out, ))
    proc.start()
    proc.join(60)
    if proc.is_alive():
        proc.kill()
        pytest.fail('the forked child hung on the parent prefetch')
    assert proc.exitcode == 0 and out.get() == (True, True)
    for step in (1, 2):
        mask, _ = model.take_plan(x)
        assert torch.equal(mask, draw_unit_mask(mask.shape, model.mask_ratio, SEED, 0, step))


def test_prefetcher_does_not_keep_a_model_alive():
    model, x = _model()
    model.take_plan(x)
    model._prefetcher.wait()
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_benchmark_tool_times_the_whole_plan_and_plan_step(load_tool, monkeypatch, capsys):
    """tools/benchmark_grouping.py --plan-only's whole-plan section runs build_plan and
    plan_step (prefetched) of GreenMIM Swin-B for both layouts and prints one row each."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / 'tools'))  # its _light
    tool = load_tool('benchmark_grouping')
    calls = []
    orig = tool.swin_b_greenmim

    def counted(img_size, ratio, backend):
        model = orig(img_size, ratio, backend)
        calls.append((backend, model.backbone.attention_backend(None, 0.0)))
        return model
    monkeypatch.setattr(tool, 'swin_b_greenmim', counted)
    tool.print_whole_plan(type('Args', (), dict(masks=2, ratio=0.75, img_size=224)))
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert calls == [('sdpa', 'sdpa'), ('flex', 'flex')]
    assert [r[:2] for r in rows] == [['sdpa', 'padded'], ['flex', 'packed']]
    assert all(float(v) > 0 for r in rows for v in (r[3], r[4], r[6], r[7]))

"""Issue 18 item 2 for the FlexAttention path (review r18), the default on CUDA
(``attn_backend='auto'``): ``tests/test_step_syncs.py`` audits the step on the ``meta`` device,
which FlexAttention refuses, so the flex layout is audited here on the CPU instead.

Inside the model step every tensor is a device tensor on a GPU (the plan has already been moved
by ``plan_step``), so the audit counts, on the CPU, every read of a tensor value on the host
(``.item()``, ``bool()``, ``torch.equal``) and every op whose output shape depends on values
(``nonzero``, boolean indexing, ...) of ANY tensor during the forward of the model step (the
flex backward has no CPU kernel in torch 2.11). FlexAttention's own internals are not audited
(its CPU reference is not the GPU kernel): the higher-order op runs outside the mode.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

import greenmim_mm.models.algorithms.greenmim as greenmim_module
from test_step_syncs import build_demo

aten = torch.ops.aten
_READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default,
          aten.nonzero.default, aten.masked_select.default, aten._unique2.default,
          aten.unique_consecutive.default, aten.argwhere.default}


class HostReads(TorchDispatchMode):
    """Record value reads and data-dependent ops on any tensor; count FlexAttention calls."""

    supports_higher_order_operators = True

    def __init__(self):
        super().__init__()
        self.events, self.flex_calls = [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if isinstance(func, torch._ops.HigherOrderOperator):
            self.flex_calls += func.name() == 'flex_attention'
            with _disable_current_modes():
                return func(*args, **kwargs)
        boolean_index = func is aten.index.Tensor and any(
            i is not None and i.dtype == torch.bool for i in args[1])
        if func in _READS or boolean_index:
            self.events.append(str(func))
        return func(*args, **kwargs)


def audit_flex_forward(name):
    """Events and FlexAttention calls of the second step's model forward (flex layout)."""
    pytest.importorskip('torch.nn.attention.flex_attention')
    model, size = build_demo(name, device='cpu', backbone=dict(attn_backend='flex'))
    x = torch.randn(2, 3, size, size)
    for _ in range(2):
        mask, plan = model.plan_step(x)
        args = (plan, ) if 'localmim' in name else (plan['geometry'], plan['cells'])
        with HostReads() as audit, torch.no_grad():
            model.masked_loss(x, mask, *args)
    return audit


@pytest.fixture(autouse=True)
def _rank0(monkeypatch):
    monkeypatch.setattr(greenmim_module, 'get_rank', lambda: 0)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Eager FlexAttention compiles its wrapper with dynamo; the compiled entry made under the
    audit's dispatch mode traces the CPU reference (``math_attention``) and fails outside the
    mode, so later flex calls in the process must not reuse it."""
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize('name', ['greenmim_swin-nano_demo_128px',
                                  'localmim_twins-nano_demo_128px'])
def test_flex_step_reads_no_value(name):
    audit = audit_flex_forward(name)
    assert audit.flex_calls > 0 and audit.events == [], audit.events


def test_flex_audit_finds_a_planted_read(monkeypatch):
    from greenmim_mm.ops import attention
    orig = attention.flex_block_mask

    def reading(plan):
        bool(plan.kv_num_blocks.any())   # a device read
        return orig(plan)
    monkeypatch.setattr(attention, 'flex_block_mask', reading)
    audit = audit_flex_forward('greenmim_swin-nano_demo_128px')
    assert audit.events and set(audit.events) <= {'aten.is_nonzero.default',
                                                 'aten._local_scalar_dense.default'}

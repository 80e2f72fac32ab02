"""torch.compile of the GreenMIM model step with the plan (mask, geometry, indices) outside the
graph: one graph, no recompile across masks, the eager step's losses and gradients.

A tiny Swin on the CPU; ``CompileCounter`` as the backend counts the graphs dynamo hands over
(it runs them eagerly, so the test is about tracing, not kernels).
"""
import pytest
import torch
from torch._dynamo.testing import CompileCounter

from greenmim_mm.registry import MODELS

TINY_SWIN = dict(embed_dims=8, depths=[2, 1, 1, 1], num_heads=[1, 1, 1, 1])


def build(compile=False):
    from mmengine.registry import init_default_scope
    init_default_scope('greenmim_mm')
    torch.manual_seed(0)
    return MODELS.build(dict(
        type='GreenMIM', mask_ratio=0.75, mask_seed=0, compile=compile,
        backbone=dict(type='GreenSwinTransformer', arch=TINY_SWIN, img_size=128, window_size=4,
                      drop_path_rate=0.0, out_indices=(3, ), attn_backend='sdpa'),
        neck=dict(type='MAEUnitDecoder', in_channels=64, embed_dims=16, depth=1, num_heads=2),
        head=dict(type='UnitReconstructionHead', loss='mse', norm_pix=True))).train()


def test_compiled_model_step_is_one_graph_over_20_masks():
    """compile=dict(...) in the model config: 20 steps (20 masks) of loss + backward give one
    graph and the eager model's losses and gradients."""
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled, eager = build(dict(backend=counter)), build()
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    for _ in range(20):
        got, want = compiled.loss(x)['loss'], eager.loss(x)['loss']
        got.backward()
        want.backward()
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert counter.frame_count == 1
    for (name, a), b in zip(compiled.named_parameters(), eager.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name
    assert int(compiled.mask_step) == 20


def test_outer_compile_leaves_the_plan_outside():
    """As mmengine's runner-level compile=True does (it compiles train_step): compiling the
    whole ``loss`` still traces one graph, the plan runs eagerly (torch.compiler.disable)."""
    torch._dynamo.reset()
    counter = CompileCounter()
    model = build()
    loss = torch.compile(model.loss, backend=counter)
    x = torch.randn(2, 3, 128, 128)
    for _ in range(4):
        loss(x)['loss'].backward()
    assert counter.frame_count == 1


def test_compile_option_is_checked():
    with pytest.raises(ValueError, match='compile must be a bool or a dict'):
        build(compile='yes')

"""torch.compile of the LocalMIM model step (issue 18 review, item 4): the plan (mask, geometry,
cell indices, decoder position caches: ``plan_step``) stays outside the graph, one graph over
several masks, the eager step's losses and gradients. A tiny Swin, a tiny ViT and the nano
Twins of the demo config on the CPU; ``CompileCounter`` as the backend counts the graphs dynamo
hands over and runs them eagerly.
"""
import pytest
import torch
from torch._dynamo.testing import CompileCounter

from greenmim_mm.models.algorithms import greenmim as greenmim_module
from greenmim_mm.models.algorithms import localmim_vit as vit_module
from greenmim_mm.registry import MODELS

TINY_SWIN = dict(embed_dims=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1])
WIDTHS, STRIDES = [16, 32, 64, 64], [8, 16, 32, 32]


@pytest.fixture(autouse=True)
def _rank0(monkeypatch):
    monkeypatch.setattr(greenmim_module, 'get_rank', lambda: 0)
    monkeypatch.setattr(vit_module, 'get_rank', lambda: 0)


def build_swin(compile=False):
    from mmengine.registry import init_default_scope
    init_default_scope('greenmim_mm')
    torch.manual_seed(0)
    return MODELS.build(dict(
        type='LocalMIM', mask_ratio=0.75, mask_seed=0, compile=compile,
        backbone=dict(type='GreenSwinTransformer', arch=TINY_SWIN, img_size=128, window_size=4,
                      drop_path_rate=0.0, out_indices=(0, 1, 2, 3), out_after_downsample=True,
                      attn_backend='sdpa'),
        necks=[dict(type='MAEGridDecoder', in_channels=c, embed_dims=8, depth=1, num_heads=2,
                    pred_dims=3 * 9) for c in WIDTHS],
        heads=[dict(type='CellReconstructionHead', loss='mse',
                    target_generator=dict(type='LocalMIMHOGGenerator', cell=s, nbins=9))
               for s in STRIDES])).train()


def build_vit(compile=False):
    from test_localmim_vit import tiny_vit_localmim
    return tiny_vit_localmim(mask_seed=0, compile=compile).train()


def build_twins(compile=False):
    from test_step_syncs import build_demo
    return build_demo('localmim_twins-nano_demo_128px', device='cpu', mask_seed=0,
                      compile=compile)[0]


def compare(compiled, eager, x, steps):
    for _ in range(steps):
        got, want = compiled.loss(x), eager.loss(x)
        assert sorted(got) == sorted(want) == ['loss_0', 'loss_1', 'loss_2', 'loss_3']
        sum(got.values()).backward()
        sum(want.values()).backward()
        for k in want:
            assert torch.allclose(got[k], want[k], rtol=1e-5, atol=1e-6), k
    for (name, a), b in zip(compiled.named_parameters(), eager.parameters()):
        if b.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name
    assert int(compiled.mask_step) == steps


@pytest.mark.parametrize('build,size', [(build_swin, 128), (build_vit, 64), (build_twins, 128)],
                         ids=['swin', 'vit', 'twins'])
def test_compiled_localmim_step_is_one_graph_over_masks(build, size):
    """compile=dict(...) in the model config: 6 steps (6 masks) of loss + backward give one
    graph and the eager model's losses and gradients."""
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled, eager = build(dict(backend=counter)), build()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    compare(compiled, eager, x, 6)
    assert counter.frame_count == 1


@pytest.mark.parametrize('build,size', [(build_swin, 128), (build_vit, 64), (build_twins, 128)],
                         ids=['swin', 'vit', 'twins'])
def test_plan_step_is_outside_an_outer_compile(build, size):
    """Compiling the whole ``loss`` (as the runner-level compile does with train_step): the
    plan step runs eagerly (torch.compiler.disable), one graph, no recompile over the masks."""
    torch._dynamo.reset()
    counter = CompileCounter()
    model = build()
    calls = []
    take = model._take_plan

    def spy(img):
        calls.append(torch.compiler.is_compiling())
        return take(img)
    model._take_plan = spy
    loss = torch.compile(model.loss, backend=counter)
    x = torch.randn(2, 3, size, size)
    for _ in range(4):
        sum(loss(x).values()).backward()
    assert calls == [False] * 4
    assert counter.frame_count == 1


def test_compile_option_is_checked():
    with pytest.raises(ValueError, match='compile must be a bool or a dict'):
        build_swin(compile='yes')

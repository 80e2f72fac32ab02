"""LocalMIM(isolate_grad=True): head k's loss trains only the layers between output k-1 and output
k plus its own decoder (issue 20, item 12; the paper's "w/ isolated grad" ablation).

Brute force with autograd, per head, in float64 on Swin, Twins-SVT and ViT: in the normal mode
each parameter's *owner* is the lowest head whose loss reaches it (structural: autograd's
``allow_unused`` None). In the isolated mode the losses are the same, every head above a
parameter's owner gives it no gradient, and its gradient of the summed loss equals the owner's
loss gradient of the normal mode.
"""
import os.path as osp

import pytest
import torch
from mmengine.config import Config

import greenmim_mm  # noqa: F401
from greenmim_mm.models.algorithms.greenmim import draw_unit_mask
from greenmim_mm.registry import MODELS
from test_convert_checkpoint import one_thread  # noqa: F401 (autouse: one intra-op thread)
from test_localmim import tiny_localmim
from test_localmim_vit import tiny_vit_localmim

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def twins_localmim(**kw):
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain',
                                   'localmim_twins-nano_demo_128px.py'))
    cfg.model.backbone.attn_backend = 'sdpa'
    cfg.model.update(kw)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def case(name, isolate):
    """(model in float64, images, mask) of one backbone; same weights for both modes."""
    gen = torch.Generator().manual_seed(1)
    if name == 'swin':
        model = tiny_localmim(isolate_grad=isolate)
        img, mask = torch.randn(2, 3, 96, 96, generator=gen), draw_unit_mask((3, 3), 0.5, 3, 0, 0)
    elif name == 'twins':
        model = twins_localmim(isolate_grad=isolate)
        img = torch.randn(2, 3, 128, 128, generator=gen)
        mask = draw_unit_mask((4, 4), 0.5, 3, 0, 0)
    else:
        model = tiny_vit_localmim(isolate_grad=isolate)
        img, mask = torch.randn(2, 3, 64, 64, generator=gen), None
    model = model.double().train()
    if mask is None:
        mask = model.draw_masks(2, 3, 0, 0)
    return model, img.double(), mask


def head_grads(model, img, mask):
    """(losses, per-head gradient lists, gradient of the summed loss, parameter names); a
    gradient is None where autograd finds no path."""
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    losses = model.head_losses(img, mask)
    per_head = [torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                for loss in losses]
    total = torch.autograd.grad(sum(losses), params, allow_unused=True)
    return [loss.detach() for loss in losses], per_head, total, names


@pytest.mark.parametrize('name', ['swin', 'twins', 'vit'])
def test_each_parameter_learns_from_the_one_head_above_it_only(name):
    losses, normal, _, names = head_grads(*case(name, False))
    iso_losses, isolated, iso_total, _ = head_grads(*case(name, True))
    for k, (a, b) in enumerate(zip(losses, iso_losses)):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=0, msg=f'loss {k}')
    heads = range(len(losses))
    owners = {}
    for i, param_name in enumerate(names):
        reached = [k for k in heads if normal[k][i] is not None]
        owners[param_name] = reached[0] if reached else None
        if not reached:
            assert iso_total[i] is None, param_name
            continue
        owner = reached[0]
        for k in heads:
            if k != owner:
                assert isolated[k][i] is None, f'head {k} reaches {param_name} (owner {owner})'
        torch.testing.assert_close(iso_total[i], normal[owner][i], rtol=1e-10, atol=1e-14,
                                   msg=param_name)
    # not vacuous: in the normal mode the top head reaches the lowest layers
    lowest = next(i for i, n in enumerate(names) if n.startswith('backbone.') and owners[n] == 0)
    assert normal[len(losses) - 1][lowest] is not None
    # every head trains something of the backbone and its own decoder
    for k in heads:
        assert any(n.startswith('backbone.') and o == k for n, o in owners.items()), k
        assert all(o == k for n, o in owners.items() if n.startswith(f'neck.{k}.')), k


def test_swin_segments_are_the_stages():
    """Swin with outputs after patch merging: head k owns stage k (blocks and its merge), its
    norm and decoder k; head 0 also the patch embedding."""
    _, normal, _, names = head_grads(*case('swin', False))
    for i, n in enumerate(names):
        owner = next((k for k in range(4) if normal[k][i] is not None), None)
        if n.startswith('backbone.patch_embed'):
            assert owner == 0, n
        elif n.startswith('backbone.stages.'):
            assert owner == int(n.split('.')[2]), n
        elif n.startswith(('backbone.norm', 'neck.', 'head.')):
            assert owner == int(n.split('.')[1][-1]), n


def test_isolate_grad_is_for_the_sparse_path_and_configs():
    model = tiny_localmim(isolate_grad=True)
    assert model.isolate_grad and not tiny_localmim().isolate_grad
    with pytest.raises(ValueError, match='sparse path'):
        model.backbone(torch.randn(1, 3, 96, 96), isolate_grad=True)
    cfg = Config.fromfile(osp.join(
        ROOT, 'configs', 'pretrain',
        'localmim_swin-base-w7_8xb256-amp-100e_in1k-224px_hog_isolated-grad.py'))
    assert cfg.model.isolate_grad is True
    base = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain',
                                    'localmim_swin-base-w7_8xb256-amp-100e_in1k-224px_hog.py'))
    cfg.model.pop('isolate_grad')
    assert cfg.to_dict() == base.to_dict()  # everything else is the normal recipe

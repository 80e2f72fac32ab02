"""Decoder widths are checked at build (issue 20 item 1, LayneH/GreenMIM#10): every decoder's
``in_channels`` must equal the width of the backbone output it reads, one ValueError naming both
numbers and the config key, instead of torch's matmul shape error at the first step.

References: the widths the backbones really output (their sparse path's tensors), not the
numbers the check itself computes.
"""
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config

import greenmim_mm  # noqa: F401
from greenmim_mm.registry import MODELS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PRETRAIN = osp.join(ROOT, 'configs', 'pretrain')


def recipe(name, **backbone):
    cfg = Config.fromfile(osp.join(PRETRAIN, name))
    cfg.model.backbone.update(backbone)
    return cfg.model


@pytest.mark.parametrize('name,key,given,width', [
    ('greenmim_swin-base-w7_8xb256-amp-800e_in1k-224px.py', 'model.neck', 1024, 768),
    ('localmim_swin-base-w7_8xb256-amp-400e_in1k-224px_hog.py', r'model.necks\[0\]', 256, 192),
])
def test_swin_b_recipe_with_arch_tiny_is_refused_at_build(name, key, given, width):
    """The report's reproduction: ``--cfg-options model.backbone.arch=tiny`` on the Swin-B recipes
    built, then died at the first step with 'mat1 and mat2 shapes cannot be multiplied'."""
    with pytest.raises(ValueError, match=rf'{key}\.in_channels={given}, but the backbone output '
                       rf'it reads \(GreenSwinTransformer out index \d\) is {width} wide: set '
                       rf'{key}\.in_channels={width}'):
        MODELS.build(recipe(name, arch='tiny'))


def test_localmim_vit_recipe_with_a_narrower_vit_is_refused():
    model = recipe('localmim_vit-base-p16_8xb256-amp-1600e_in1k-224px_hog.py', arch='deit-s')
    with pytest.raises(ValueError, match=r'model\.necks\[0\]\.in_channels=768, .*\(LocalMIMMAEViT '
                       r'out index 1\) is 384 wide'):
        MODELS.build(model)


def test_localmim_twins_checks_every_head():
    cfg = Config.fromfile(osp.join(PRETRAIN, 'localmim_twins-nano_demo_128px.py'))
    cfg.model.necks[2].in_channels = 64  # head 2 reads stage 3's embedding: 256 wide
    with pytest.raises(ValueError, match=r'model\.necks\[2\]\.in_channels=64, .*\(GreenTwinsSVT '
                       r'out index 2\) is 256 wide'):
        MODELS.build(cfg.model)


@pytest.mark.parametrize('name', ['greenmim_swin-nano_demo_128px.py',
                                  'greenmim_twins-nano_demo_128px.py'])
def test_the_width_named_is_what_the_backbone_outputs(name):
    """A narrower backbone (embed dims halved) with the recipe's decoder: refused, naming a width;
    with that width the model builds and its sparse path outputs tokens of exactly that width,
    which the decoder takes (a finite loss)."""
    cfg = Config.fromfile(osp.join(PRETRAIN, name))
    backbone = MODELS.build(cfg.model.backbone)
    dims = backbone.embed_dims
    cfg.model.backbone.arch = (dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4])
                               if 'swin' in name else
                               dict(backbone.arch_zoo['nano'], embed_dims=[d // 2 for d in dims]))
    with pytest.raises(ValueError, match=r'model\.neck\.in_channels=256,') as err:
        MODELS.build(cfg.model)
    width = int(re.search(r'set model\.neck\.in_channels=(\d+)', str(err.value)).group(1))
    cfg.model.neck.in_channels = width
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    x = torch.randn(2, 3, 128, 128)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, :3] = True
    with torch.no_grad():
        assert model.backbone(x, mask=mask)[-1].shape[-1] == width == 128
        assert torch.isfinite(model.loss(x)['loss'])


def test_train_tool_prints_the_width_error_as_one_line(tmp_path):
    """The report's command, `tools/train.py <Swin-B recipe> --cfg-options
    model.backbone.arch=tiny`: exit with the one-line error (before: the error at the end of a
    traceback through mmengine's Runner and registry)."""
    from greenmim_mm.apis import launch
    argv = [osp.join(PRETRAIN, 'greenmim_swin-base-w7_8xb256-amp-800e_in1k-224px.py'),
            '--work-dir', str(tmp_path), '--cfg-options', 'model.backbone.arch=tiny']
    with pytest.raises(SystemExit) as err:
        launch.main_train(argv)
    assert err.value.code == (
        'train: error: model.neck.in_channels=1024, but the backbone output it reads '
        '(GreenSwinTransformer out index 3) is 768 wide: set model.neck.in_channels=768 (or a '
        'backbone arch whose output is 1024 wide)')


def test_every_mismatched_decoder_is_named_at_once():
    """LocalMIM Swin-B with arch=tiny: all four decoders are too wide; one error names each
    (key, given width, the width of the output it reads), so one edit fixes the config (before:
    one decoder per run). The widths named are the ones the recipe's decoders need for Swin-T
    (C = 96, outputs after patch merging: 2C, 4C, 8C, 8C)."""
    with pytest.raises(ValueError) as err:
        MODELS.build(recipe('localmim_swin-base-w7_8xb256-amp-400e_in1k-224px_hog.py',
                            arch='tiny'))
    named = re.findall(r'(model\.necks\[\d\])\.in_channels=(\d+), but the backbone output it '
                       r'reads \(GreenSwinTransformer out index (\d)\) is (\d+) wide: set '
                       r'\1\.in_channels=\4', str(err.value))
    assert named == [('model.necks[0]', '256', '0', '192'), ('model.necks[1]', '512', '1', '384'),
                     ('model.necks[2]', '1024', '2', '768'),
                     ('model.necks[3]', '1024', '3', '768')]
    assert '\n' not in str(err.value)

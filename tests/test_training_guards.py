"""Runs that cannot silently go wrong (issue 10 points 2, 3 and 6): mask ratios that mask nothing,
non-finite losses, frozen stages and unused out norms under DDP, LayerNorm eps of the
pre-training configs.

References: mmpretrain's SwinTransformer for what ``frozen_stages`` freezes; the configs' own
architecture for how many LayerNorms a backbone has.
"""
import glob
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmpretrain.models.backbones import SwinTransformer

import greenmim_mm  # noqa: F401
from greenmim_mm.engine import NonFiniteLossError
from greenmim_mm.models import GreenSwinTransformer, GreenTwinsSVT
from greenmim_mm.models.heads import UnitReconstructionHead
from greenmim_mm.registry import HOOKS, MODELS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CFG = osp.join(ROOT, 'configs', 'pretrain', 'greenmim_swin-nano_demo_128px.py')
NANO = dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])


def greenmim(mask_ratio=0.75, img_size=128, **backbone):
    return MODELS.build(dict(
        type='GreenMIM', mask_ratio=mask_ratio,
        backbone=dict(type='GreenSwinTransformer', arch=NANO, img_size=img_size, window_size=4,
                      **backbone),
        neck=dict(type='MAEUnitDecoder', in_channels=256, embed_dims=32, depth=1, num_heads=2),
        head=dict(type='UnitReconstructionHead')))


# ----------------------------------------------------------------------------- mask ratio
@pytest.mark.parametrize('ratio', [0, 0.0, 1e-17])
def test_mask_ratio_that_masks_no_unit_is_refused_at_build(ratio):
    with pytest.raises(ValueError, match=rf'mask_ratio={ratio}.*4x4 unit grid'):
        greenmim(mask_ratio=ratio)


def test_localmim_refuses_a_mask_ratio_that_masks_nothing_too():
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain', 'localmim_swin-nano_demo_128px.py'))
    cfg.model.mask_ratio = 0
    with pytest.raises(ValueError, match=r'mask_ratio=0.0 masks no unit of the 4x4 unit grid'):
        MODELS.build(cfg.model)


def test_smallest_useful_mask_ratio_builds_and_masks_one_unit():
    model = greenmim(mask_ratio=0.01)  # 16 units: keep floor(15.84) = 15, mask 1
    assert int(model.next_mask((128, 128)).sum()) == 1


# ----------------------------------------------------------------------------- DDP safety
def test_greenmim_refuses_out_norms_it_does_not_use():
    with pytest.raises(ValueError, match=r'out_indices=\(0, 1, 2, 3\).*'
                                         r'Set model.backbone.out_indices=\(3, \)'):
        greenmim(out_indices=(0, 1, 2, 3))


@pytest.mark.parametrize('frozen', [4, -2])
def test_frozen_stages_out_of_range_is_one_clear_error(frozen):
    """mmpretrain's Swin raises a bare IndexError (4) at train() or ignores the value (-2)."""
    with pytest.raises(ValueError, match=rf'frozen_stages must be in \[-1, 3\].*got {frozen}'):
        GreenSwinTransformer(arch=NANO, img_size=128, window_size=4, frozen_stages=frozen)


@pytest.mark.parametrize('frozen,out_indices', [(0, (3, )), (1, (3, )), (1, (0, 1, 2, 3)),
                                                (2, (0, 3))])
def test_frozen_stages_are_frozen_at_construction_as_mmpretrain_freezes_them(frozen, out_indices):
    kw = dict(arch=NANO, img_size=128, window_size=4, frozen_stages=frozen,
              out_indices=out_indices, norm_eval=True)
    ref = SwinTransformer(**kw)
    ref.train()  # mmpretrain freezes here only
    expected = {n for n, p in ref.named_parameters() if not p.requires_grad}
    assert expected and len(expected) < len(list(ref.parameters()))
    ours = GreenSwinTransformer(**kw)
    assert {n for n, p in ours.named_parameters() if not p.requires_grad} == expected
    ours.train()  # train() keeps mmpretrain's behaviour (frozen modules in eval mode)
    assert {n for n, p in ours.named_parameters() if not p.requires_grad} == expected
    assert [m.training for m in ours.modules()] == [m.training for m in ref.modules()]


# ----------------------------------------------------------------------------- LayerNorm eps
PRETRAIN = sorted(glob.glob(osp.join(ROOT, 'configs', 'pretrain', 'greenmim_*.py'))
                  + glob.glob(osp.join(ROOT, 'configs', 'pretrain', 'localmim_*.py')))


def _small_backbone(path):
    """The config's backbone at a small size (the norms come from norm_cfg / patch_cfg /
    stage_cfgs, not from the arch), so the build stays fast."""
    backbone = Config.fromfile(path).model.backbone
    if backbone.type.endswith('GreenSwinTransformer'):
        backbone.arch = NANO
    elif backbone.type.endswith('GreenTwinsSVT'):
        backbone.arch = 'nano'
    else:  # LocalMIM's ViT
        backbone.update(arch=dict(embed_dims=32, num_layers=4, num_heads=2,
                                  feedforward_channels=64), img_size=64)
        backbone.pop('out_indices', None)
    return MODELS.build(backbone)


@pytest.mark.parametrize('path', PRETRAIN, ids=osp.basename)
def test_pretrain_configs_build_every_encoder_layernorm_with_eps_1e6(path):
    """The official GreenMIM and LocalMIM encoders use LayerNorm(eps=1e-6) (the official
    GreenMIM and LocalMIM model builders): every LayerNorm of a Swin; every LayerNorm of a Twins-SVT but its patch
    embeddings' (1e-5 in mmpretrain's SVT as in timm's Twins); every LayerNorm of the ViT."""
    backbone = _small_backbone(path)
    norms = {n: m for n, m in backbone.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    if isinstance(backbone, GreenSwinTransformer):
        # patch embedding + 2 per block + 3 patch mergings + the out norms
        depths = backbone.depths
        assert len(norms) == 1 + 2 * sum(depths) + 3 + len(backbone.out_indices)
    elif isinstance(backbone, GreenTwinsSVT):
        patch = {n for n in norms if n.startswith('patch_embeds.')}
        assert len(patch) == 4, sorted(norms)
        assert all(norms[n].eps == 1e-5 for n in patch)
        norms = {n: m for n, m in norms.items() if n not in patch}
        assert len(norms) >= 2 * sum(backbone.depths) + 1, sorted(norms)
    assert all(m.eps == 1e-6 for m in norms.values()), {n: m.eps for n, m in norms.items()}


# ----------------------------------------------------------------------------- non-finite loss
CONFIGS = [p for sub in ('pretrain', 'finetune', 'detection')
           for p in sorted(glob.glob(osp.join(ROOT, 'configs', sub, '*.py')))]


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_every_config_stops_on_non_finite_loss(path):
    cfg = Config.fromfile(path)
    types = [h['type'] for h in cfg.get('custom_hooks', [])]
    assert any(t.split('.')[-1] == 'NonFiniteLossHook' for t in types), types
    hook = HOOKS.build(dict(type='greenmim_mm.NonFiniteLossHook'))
    assert hook.priority == 'ABOVE_NORMAL'  # before LoggerHook and CheckpointHook


@pytest.fixture(scope='module')
def tiny_demo_data(demo_data_factory):
    return demo_data_factory('nan', train_per_class=4, val_per_class=1)


def demo_argv(work_dir, data_root, *options):
    return [DEMO_CFG, '--work-dir', str(work_dir), '--cfg-options', 'train_cfg.max_epochs=1',
            'train_dataloader.batch_size=4', f'train_dataloader.dataset.data_root={data_root}',
            'default_hooks.checkpoint.by_epoch=False', 'default_hooks.checkpoint.interval=1',
            *options]


def test_weights_turning_nan_are_never_checkpointed(tiny_demo_data, tmp_path, monkeypatch):
    """The update of iteration 2 overflows the weights while its loss was finite (a reviewer's
    lr=1e6 run wrote such an iter_2.pth): the run stops naming iteration 2; iter_1.pth stays
    and is finite; no iter_2.pth is written."""
    from greenmim_mm.apis import launch
    from greenmim_mm.engine import NonFiniteWeightsError
    original, calls = torch.optim.AdamW.step, []

    def step_then_overflow_on_call_2(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                self.param_groups[0]['params'][0].fill_(float('inf'))
        return out

    monkeypatch.setattr(torch.optim.AdamW, 'step', step_then_overflow_on_call_2)
    with pytest.raises(NonFiniteWeightsError, match=r'after iteration 2: 1 of \d+ tensors'):
        launch.main_train(demo_argv(tmp_path, tiny_demo_data))
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_1.pth']
    state = torch.load(tmp_path / 'iter_1.pth', weights_only=True)['state_dict']
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_loss_turning_nan_stops_before_its_checkpoint(tiny_demo_data, tmp_path, monkeypatch):
    """Iteration 3's loss is NaN: the run raises naming iteration 3; the checkpoints of
    iterations 1-2 exist (and are finite), none of iteration 3."""
    from greenmim_mm.apis import launch
    original, calls = UnitReconstructionHead.loss, []

    def loss_nan_from_call_3(self, *args, **kwargs):
        calls.append(1)
        loss = original(self, *args, **kwargs)
        return loss * float('nan') if len(calls) >= 3 else loss

    monkeypatch.setattr(UnitReconstructionHead, 'loss', loss_nan_from_call_3)
    # the first iteration after a save is checked at once (SafeCheckpointHook); elsewhere
    # NonFiniteLossHook reads its device flag every `interval` iterations
    with pytest.raises(NonFiniteLossError, match=r'[Nn]on-finite loss.* at iteration 3\b'):
        launch.main_train(demo_argv(tmp_path, tiny_demo_data))
    assert len(calls) == 3
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_1.pth', 'iter_2.pth']
    state = torch.load(tmp_path / 'iter_2.pth', map_location='cpu', weights_only=False)
    assert all(torch.isfinite(t).all() for t in state['state_dict'].values()
               if t.is_floating_point())


def test_nan_from_the_first_iteration_exits_non_zero_without_checkpoint(tiny_demo_data,
                                                                        tmp_path):
    """A config whose loss is NaN from the start (std 0 in the data preprocessor): tools/train.py
    exits non-zero with the error, and writes no checkpoint."""
    argv = demo_argv(tmp_path / 'work', tiny_demo_data, 'data_preprocessor.std=[0,0,0]')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    run = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), *argv],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]  # one line, no traceback (issue 19.7)
    assert last.startswith('train: error: Non-finite loss at iteration 1 '), run.stderr[-2000:]
    assert 'Traceback' not in run.stderr and 'lower the learning rate (lr ' in last, last
    assert not glob.glob(str(tmp_path / 'work' / '*.pth'))

"""GreenMIM pre-training: decoder placement, loss, masks, resume, configs, visualisation.

References are independent: hand loops over units for the loss, a raster walk for placement,
closed-form sin-cos for positions, an uninterrupted run for resuming.
"""
import glob
import json
import math
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import init_default_scope

import greenmim_mm  # noqa: F401
from greenmim_mm.models.algorithms import GreenMIM, draw_unit_mask
from greenmim_mm.models.algorithms import greenmim as greenmim_module
from greenmim_mm.models.heads import UnitReconstructionHead
from greenmim_mm.models.necks import LinearUnitDecoder, MAEUnitDecoder
from greenmim_mm.models.necks.unit_decoder import unit_sincos_embedding
from greenmim_mm.models.utils import patchify, unpatchify
from greenmim_mm.ops import random_unit_mask
from greenmim_mm.registry import HOOKS, MODELS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CFG = osp.join(ROOT, 'configs', 'pretrain', 'greenmim_swin-nano_demo_128px.py')
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def tiny_greenmim(size=96, decoder='MAEUnitDecoder', **kw):
    """A tiny GreenMIM: 16-d Swin, window 3 (maps 24/12/6/3 at 96 px), 32-d decoder."""
    torch.manual_seed(0)
    neck = dict(type=decoder, in_channels=128)
    if decoder == 'MAEUnitDecoder':
        neck.update(embed_dims=32, depth=1, num_heads=2)
    model = MODELS.build(dict(
        type='GreenMIM',
        backbone=dict(type='GreenSwinTransformer',
                      arch=dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4]),
                      img_size=size, window_size=size // 32, drop_path_rate=0.0,
                      attn_backend='sdpa'),
        neck=neck,
        head=dict(type='UnitReconstructionHead', loss='mse', norm_pix=True),
        data_preprocessor=dict(mean=MEAN, std=STD, to_rgb=True),
        **kw))
    model.init_weights()
    assert isinstance(model, GreenMIM)
    return model


# ----------------------------------------------------------------------------- decoder
def identity_decoder(dims=8, depth=0):
    """MAEUnitDecoder whose embed is the identity and whose mask token is 0."""
    dec = MAEUnitDecoder(in_channels=dims, embed_dims=dims, depth=depth, num_heads=2, unit=2,
                         in_chans=1)
    dec.init_weights()
    with torch.no_grad():
        dec.decoder_embed.weight.copy_(torch.eye(dims))
        dec.decoder_embed.bias.zero_()
        dec.mask_token.zero_()
    return dec


def raster_placement(latent, mask):
    """Reference: walk the grid in raster order, taking the next latent at each visible unit."""
    b, _, d = latent.shape
    out = torch.zeros(b, mask.numel(), d, dtype=latent.dtype)
    k = 0
    for u, hidden in enumerate(mask.flatten().tolist()):
        if not hidden:
            out[:, u] = latent[:, k]
            k += 1
    assert k == latent.shape[1]
    return out


@pytest.mark.parametrize('grid', [(4, 4), (2, 3), (3, 5)])
def test_decoder_places_each_latent_at_its_own_unit(grid):
    dec = identity_decoder()
    mask = random_unit_mask(grid, 0.5, torch.Generator().manual_seed(1))
    n = int((~mask).sum())
    latent = torch.randn(2, n, 8)
    pos = unit_sincos_embedding(grid, 8)
    placed = dec.place(dec.decoder_embed(latent), mask)
    torch.testing.assert_close(placed, raster_placement(latent, mask) + pos, rtol=0, atol=1e-6)


def test_sincos_position_is_raster_row_column():
    """Row r, column c of a non-square grid: rows encoded by the first half, columns by the
    second (closed form, independent of mmpretrain)."""
    hu, wu, d = 3, 5, 16
    pos = unit_sincos_embedding((hu, wu), d)
    omega = 1.0 / 10000**(torch.arange(d // 4, dtype=torch.float64) / (d // 4))
    for r in range(hu):
        for c in range(wu):
            ref = torch.cat([torch.sin(r * omega), torch.cos(r * omega),
                             torch.sin(c * omega), torch.cos(c * omega)]).float()
            torch.testing.assert_close(pos[r * wu + c], ref, rtol=0, atol=1e-6)


def test_decoder_output_of_a_visible_unit_depends_only_on_its_latent():
    """Without blocks, changing latent k changes exactly the output of the k-th visible unit."""
    torch.manual_seed(0)
    dec = identity_decoder(depth=0)
    mask = random_unit_mask((4, 4), 0.5, torch.Generator().manual_seed(2))
    vis = (~mask).flatten().nonzero().squeeze(1)
    latent = torch.randn(1, len(vis), 8)
    base = dec(latent, mask)
    for k in range(len(vis)):
        bumped = latent.clone()
        bumped[0, k] += torch.linspace(-1, 1, 8)  # not constant: LayerNorm would remove it
        changed = (dec(bumped, mask) - base).abs().amax(-1)[0] > 0
        assert changed.nonzero().flatten().tolist() == [int(vis[k])]


def test_permuting_only_the_mask_moves_the_latents():
    """Same latents, two masks with the same number of visible units: each latent follows the
    raster order of its mask's visible units, through the full decoder (with a block)."""
    torch.manual_seed(0)
    dec = MAEUnitDecoder(in_channels=8, embed_dims=8, depth=1, num_heads=2, unit=2, in_chans=1)
    dec.init_weights()
    m1 = random_unit_mask((4, 4), 0.75, torch.Generator().manual_seed(3))
    m2 = random_unit_mask((4, 4), 0.75, torch.Generator().manual_seed(4))
    assert not torch.equal(m1, m2)
    latent = torch.randn(2, int((~m1).sum()), 8)
    for mask in (m1, m2):
        x = raster_placement(dec.decoder_embed(latent), mask)
        x = torch.where(mask.flatten()[None, :, None], dec.mask_token, x)
        x = x + unit_sincos_embedding((4, 4), 8)
        for blk in dec.decoder_blocks:
            x = blk(x)
        ref = dec.decoder_pred(dec.decoder_norm(x))
        torch.testing.assert_close(dec(latent, mask), ref, rtol=1e-5, atol=1e-6)


def test_linear_decoder_placement_and_masked_units_see_only_position():
    torch.manual_seed(0)
    dec = LinearUnitDecoder(in_channels=8, unit=2, in_chans=3)
    dec.init_weights()
    mask = random_unit_mask((3, 3), 0.5, torch.Generator().manual_seed(5))
    latent = torch.randn(2, int((~mask).sum()), 8)
    x = torch.where(mask.flatten()[None, :, None], dec.mask_token,
                    raster_placement(latent, mask)) + unit_sincos_embedding((3, 3), 8)
    out = dec(latent, mask)
    torch.testing.assert_close(out, dec.decoder_pred(x), rtol=1e-5, atol=1e-6)
    masked = mask.flatten()
    torch.testing.assert_close(dec(torch.randn_like(latent), mask)[:, masked], out[:, masked])


def test_decoder_rejects_a_latent_count_that_does_not_match_the_mask():
    dec = identity_decoder()
    mask = random_unit_mask((4, 4), 0.75)
    with pytest.raises(ValueError, match='visible units'):
        dec(torch.randn(1, 5, 8), mask)


# ----------------------------------------------------------------------------- head
def reference_loss(pred, imgs, mask, unit, kind, norm_pix):
    """Loop over masked units; per-unit (p, q, c) target normalised by hand."""
    b, c, h, w = imgs.shape
    wu = w // unit
    total, count = 0.0, 0
    for i in range(b):
        for u, hidden in enumerate(mask.flatten().tolist()):
            if not hidden:
                continue
            r, col = divmod(u, wu)
            patch = imgs[i, :, r * unit:(r + 1) * unit, col * unit:(col + 1) * unit]
            t = patch.permute(1, 2, 0).reshape(-1).double()  # (p, q, c) row-major
            if norm_pix:
                mean = t.sum() / t.numel()
                var = ((t - mean)**2).sum() / (t.numel() - 1)  # unbiased
                t = (t - mean) / math.sqrt(var + 1e-6)
            diff = pred[i, u].double() - t
            total += float((diff**2).mean() if kind == 'mse' else diff.abs().mean())
            count += 1
    return total / count


@pytest.mark.parametrize('kind,norm_pix', [('mse', True), ('l1', False), ('mse', False)])
def test_head_loss_equals_a_loop_over_masked_units(kind, norm_pix):
    torch.manual_seed(0)
    unit = 8
    imgs = torch.randn(2, 3, 16, 24) * 2 + 0.5
    mask = random_unit_mask((2, 3), 0.5, torch.Generator().manual_seed(6))
    pred = torch.randn(2, 6, unit * unit * 3)
    head = UnitReconstructionHead(loss=kind, norm_pix=norm_pix, unit=unit)
    got = float(head.loss(pred, imgs, mask))
    assert got == pytest.approx(reference_loss(pred, imgs, mask, unit, kind, norm_pix),
                                rel=1e-5)


def test_head_counts_masked_units_only():
    torch.manual_seed(0)
    head = UnitReconstructionHead(loss='mse', norm_pix=True, unit=8)
    imgs = torch.randn(2, 3, 16, 16)
    mask = torch.tensor([[True, False], [False, True]])
    pred = torch.randn(2, 4, 192)
    base = head.loss(pred, imgs, mask)
    visible_changed = pred.clone()
    visible_changed[:, [1, 2]] += 10.0
    assert torch.equal(head.loss(visible_changed, imgs, mask), base)
    masked_changed = pred.clone()
    masked_changed[1, 3, 0] += 1.0
    assert head.loss(masked_changed, imgs, mask) != base


def test_patchify_order_and_round_trip():
    imgs = torch.randn(2, 3, 16, 24)
    units = patchify(imgs, 8)
    assert units.shape == (2, 6, 192)
    # unit 4 = row 1, column 1; element (p=2, q=5, c=1) sits at (2 * 8 + 5) * 3 + 1
    assert units[1, 4, (2 * 8 + 5) * 3 + 1] == imgs[1, 1, 8 + 2, 8 + 5]
    assert torch.equal(unpatchify(units, (2, 3), 8), imgs)


def test_head_to_image_inverts_norm_pix():
    head = UnitReconstructionHead(norm_pix=True, unit=8)
    imgs = torch.randn(1, 3, 16, 16) * 3 + 1
    target = head.construct_target(imgs)
    torch.testing.assert_close(head.to_image(target, imgs), imgs, rtol=1e-5, atol=1e-5)


def test_head_rejects_unknown_loss():
    with pytest.raises(ValueError, match='loss must be one of'):
        UnitReconstructionHead(loss='l2')


# ----------------------------------------------------------------------------- algorithm
def test_loss_backward_reaches_backbone_decoder_and_mask_token():
    model = tiny_greenmim()
    losses = model.loss(torch.randn(2, 3, 96, 96))
    assert set(losses) == {'loss'} and losses['loss'].dim() == 0
    losses['loss'].backward()
    for name in ('backbone.patch_embed.projection.weight',
                 'backbone.stages.0.blocks.1.attn.w_msa.relative_position_bias_table',
                 'backbone.stages.3.blocks.0.ffn.layers.0.0.weight', 'backbone.norm3.weight',
                 'neck.decoder_embed.weight', 'neck.decoder_blocks.0.attn.qkv.weight',
                 'neck.decoder_pred.weight', 'neck.mask_token'):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_forward_modes_and_reconstruct():
    model = tiny_greenmim().eval()
    x = torch.randn(2, 3, 96, 96)
    feats = model(x, mode='tensor')
    assert feats[-1].shape == (2, 128, 3, 3)  # dense path
    step = model._step
    rec, mask = model.reconstruct(x, seed=3)
    assert rec.shape == x.shape and mask.shape == (3, 3) and model._step == step
    assert torch.equal(mask, draw_unit_mask((3, 3), 0.75, 3, 0, 0))


def test_linear_decoder_variant_trains():
    model = tiny_greenmim(decoder='LinearUnitDecoder')
    model.loss(torch.randn(2, 3, 96, 96))['loss'].backward()
    assert model.neck.mask_token.grad.abs().sum() > 0


@pytest.mark.parametrize('ratio', [1.0, -0.1, 1.5, 'high'])
def test_bad_mask_ratio_is_a_clear_error(ratio):
    with pytest.raises(ValueError, match='mask_ratio'):
        tiny_greenmim(mask_ratio=ratio)


def test_masks_depend_on_seed_rank_and_step_only():
    grid = (7, 7)
    ref = draw_unit_mask(grid, 0.75, 0, 0, 0)
    assert torch.equal(ref, draw_unit_mask(grid, 0.75, 0, 0, 0))
    assert int((~ref).sum()) == 12
    others = [draw_unit_mask(grid, 0.75, *key) for key in
              [(0, 1, 0), (0, 0, 1), (1, 0, 0), (0, 2, 0), (0, 0, 2)]]
    assert all(not torch.equal(ref, m) for m in others)


def test_model_masks_differ_across_ranks_and_steps_and_resume_exactly(monkeypatch):
    def masks(model, n, rank):
        monkeypatch.setattr(greenmim_module, 'get_rank', lambda: rank)
        return [model.next_mask((128, 128)) for _ in range(n)]

    a = tiny_greenmim(mask_seed=7)
    run = masks(a, 6, rank=0)
    assert len({tuple(m.flatten().tolist()) for m in run}) == 6  # steps differ
    assert a.state_dict()['mask_step'].item() == 6
    b = tiny_greenmim(mask_seed=7)
    other_rank = masks(b, 6, rank=1)
    assert all(not torch.equal(x, y) for x, y in zip(run, other_rank))
    # resume: a fresh model loading the state after 3 steps draws masks 3..5 of the run
    c = tiny_greenmim(mask_seed=7)
    first = masks(c, 3, rank=0)
    state = c.state_dict()
    assert all(torch.equal(x, y) for x, y in zip(first, run[:3]))
    d = tiny_greenmim(mask_seed=7)
    d.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(masks(d, 3, rank=0), run[3:]))


def test_default_mask_seed_is_the_torch_seed_at_the_first_step():
    model = tiny_greenmim()
    torch.manual_seed(1234)
    mask = model.next_mask((128, 128))
    assert model.base_seed == 1234
    assert torch.equal(mask, draw_unit_mask((4, 4), 0.75, 1234, 0, 0))


# ----------------------------------------------------------------------------- configs
PAPER = ['greenmim_swin-base-w7_8xb256-amp-800e_in1k-224px.py',
         'greenmim_swin-base-w14_8xb256-amp-800e_in1k-224px.py',
         'greenmim_swin-large-w14_8xb256-amp-800e_in1k-224px.py']


@pytest.mark.parametrize('name', PAPER)
def test_paper_configs(name):
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain', name))
    assert cfg.model.type == 'GreenMIM' and cfg.model.mask_ratio == 0.75
    assert cfg.model.neck.embed_dims == 512 and cfg.model.neck.depth == 1
    assert cfg.model.head.norm_pix and cfg.model.head.loss == 'mse'
    assert cfg.model.backbone.drop_path_rate == 0.0 and cfg.model.backbone.img_size == 224
    assert cfg.train_dataloader.batch_size == 256
    assert cfg.train_dataloader.dataset.with_label is False
    assert cfg.optim_wrapper.type == 'AutocastOptimWrapper' and cfg.optim_wrapper.dtype == 'bfloat16'
    assert cfg.optim_wrapper.optimizer.betas == (0.9, 0.95)
    assert cfg.auto_scale_lr == dict(base_batch_size=256, enable=True)
    warm, cos = cfg.param_scheduler
    assert (warm.end, cos.begin, cos.end, cos.eta_min) == (40, 40, 800, 0.0)
    assert cfg.train_cfg.max_epochs == 800
    large = 'large' in name
    assert cfg.model.neck.in_channels == (1536 if large else 1024)
    if 'w14' in name:
        assert [s['window_size'] for s in cfg.model.backbone.stage_cfgs] == [14, 14, 14, 7]


def test_paper_weight_decay_groups():
    """No decay on norms, biases, relative position bias tables and the mask token."""
    from mmengine.optim import build_optim_wrapper
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain', PAPER[1]))
    model = tiny_greenmim()
    wrapper_cfg = cfg.optim_wrapper.copy()   # AutocastOptimWrapper: builds on the CPU too
    init_default_scope('greenmim_mm')
    wrapper = build_optim_wrapper(model, wrapper_cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            name = names[id(p)]
            no_decay = (p.dim() == 1 or 'relative_position_bias_table' in name
                        or 'mask_token' in name)
            assert group['weight_decay'] == (0.0 if no_decay else 0.05), name


@pytest.mark.parametrize('gpus,lr', [(1, 1e-4), (8, 8e-4)])
def test_paper_lr_is_1e4_per_256_images(gpus, lr):
    """mmengine's auto_scale_lr turns the configured lr into 1e-4 * total_batch / 256."""
    from types import SimpleNamespace

    from mmengine.logging import MMLogger
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain', PAPER[0]))
    wrapper_cfg = cfg.optim_wrapper.copy()   # AutocastOptimWrapper: builds on the CPU too
    init_default_scope('greenmim_mm')
    wrapper = build_optim_wrapper(torch.nn.Linear(2, 2), wrapper_cfg)
    runner = SimpleNamespace(_train_dataloader=cfg.train_dataloader, world_size=gpus,
                             logger=MMLogger.get_current_instance(), param_schedulers=None)
    Runner.scale_lr(runner, wrapper, cfg.auto_scale_lr)
    assert all(g['lr'] == pytest.approx(lr) for g in wrapper.optimizer.param_groups)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope='module')
def tiny_demo_data(demo_data_factory):
    return demo_data_factory('data', train_per_class=4, val_per_class=1)


class Killed(RuntimeError):
    """Stands for the run being killed (the process dies; nothing after it runs)."""


@HOOKS.register_module(force=True)
class KillAtIteration(Hook):
    """Raise ``Killed`` at the start of training iteration ``iteration`` (1-based)."""

    def __init__(self, iteration):
        self.iteration = iteration

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 == self.iteration:
            raise Killed(f'killed in iteration {self.iteration}')


def run_train(work_dir, data_root, epochs, resume=None, tag='', config=DEMO_CFG, options=(),
              num_workers=0, kill_at=None):
    """tools/train.py on ``config`` (default: the GreenMIM demo) with its shipped pipeline
    (RandomResizedCrop + flip), batch 4, LoggerHook interval 1, extra ``options``; ``kill_at``: die
    at the start of that iteration. Returns the logged {iteration: loss}."""
    from greenmim_mm.apis import launch
    argv = [config, '--work-dir', str(work_dir), '--cfg-options',
            f'train_cfg.max_epochs={epochs}', 'train_dataloader.batch_size=4',
            f'train_dataloader.dataset.data_root={data_root}',
            f'train_dataloader.num_workers={num_workers}',
            f'train_dataloader.persistent_workers={bool(num_workers)}',
            'default_hooks.logger.interval=1', 'log_processor.window_size=1',
            f'experiment_name=greenmim_resume_test{tag}', *options]
    if resume:
        argv[3:3] = ['--resume', resume]
    cfg = launch.build_train_config(launch.parse_train_args(argv))
    if kill_at:
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
            dict(type='KillAtIteration', iteration=kill_at)]
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg)
    try:
        runner.train()
    except Killed:
        pass
    [scalars] = glob.glob(osp.join(str(work_dir), '*', 'vis_data', 'scalars.json'))
    with open(scalars) as f:
        return {r['iter']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


def test_resume_reproduces_an_uninterrupted_run(tiny_demo_data, tmp_path):
    full = run_train(tmp_path / 'full', tiny_demo_data, 2, tag='_full')
    first = run_train(tmp_path / 'first', tiny_demo_data, 1, tag='_first')
    ckpt = str(tmp_path / 'first' / 'epoch_1.pth')
    resumed = run_train(tmp_path / 'resumed', tiny_demo_data, 2, resume=ckpt, tag='_resumed')
    assert sorted(full) == list(range(1, 11))
    assert sorted(first) == list(range(1, 6)) and sorted(resumed) == list(range(6, 11))
    for it in range(1, 11):
        got = first[it] if it <= 5 else resumed[it]
        assert got == pytest.approx(full[it], abs=1e-6), it
    ckpt_state = torch.load(ckpt, map_location='cpu', weights_only=False)['state_dict']
    assert int(ckpt_state['mask_step']) == 5


@pytest.fixture(scope='module')
def three_epochs(tiny_demo_data, tmp_path_factory):
    """An uninterrupted 3-epoch run without workers (15 iterations)."""
    return run_train(tmp_path_factory.mktemp('full3'), tiny_demo_data, 3, tag='_full3')


@pytest.mark.parametrize('killed_workers,resumed_workers', [(2, 0), (0, 2)])
def test_run_killed_in_epoch_3_resumes_exactly(tiny_demo_data, three_epochs, tmp_path,
                                               killed_workers, resumed_workers):
    """Killed in iteration 12 (epoch 3), resumed from epoch_2.pth: every later loss equals the
    uninterrupted run's, with the shipped random pipeline, with and without (persistent)
    workers, either way round."""
    killed = run_train(tmp_path / 'killed', tiny_demo_data, 3, tag='_killed',
                       num_workers=killed_workers, kill_at=12)
    assert sorted(killed) == list(range(1, 12))
    assert sorted(p.name for p in (tmp_path / 'killed').glob('*.pth')) == ['epoch_1.pth',
                                                                          'epoch_2.pth']
    resumed = run_train(tmp_path / 'resumed', tiny_demo_data, 3, tag='_resumed',
                        resume=str(tmp_path / 'killed' / 'epoch_2.pth'),
                        num_workers=resumed_workers)
    assert sorted(three_epochs) == list(range(1, 16)) and sorted(resumed) == list(range(11, 16))
    for it in range(1, 16):
        got = killed[it] if it < 12 else resumed[it]
        assert got == pytest.approx(three_epochs[it], abs=1e-6), it


def test_visualize_reconstruction_writes_a_grid(tiny_demo_data, tmp_path):
    from greenmim_mm.apis import visualization as vis
    model = tiny_greenmim(size=128)
    cfg = Config.fromfile(DEMO_CFG)
    cfg.model.backbone.arch = dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])
    cfg.model.backbone.attn_backend = 'sdpa'
    cfg.model.neck.update(in_channels=128, embed_dims=32, num_heads=2)
    ckpt = str(tmp_path / 'model.pth')
    torch.save(dict(state_dict=model.state_dict()), ckpt)
    cfg_file = str(tmp_path / 'cfg.py')
    cfg.dump(cfg_file)
    out = str(tmp_path / 'grid.png')
    vis.main([cfg_file, ckpt, '--out', out, '--num', '3', '--data-root', tiny_demo_data])
    from PIL import Image
    img = Image.open(out)
    pad = vis.PAD
    assert img.size == (3 * (128 + pad) + pad, 3 * (128 + pad) + pad)
    assert img.mode == 'RGB'


def test_make_demo_flow_end_to_end(tmp_path, capsys, load_tool):
    """``make demo``'s script on tiny data: trains, writes checkpoints, scalars and the picture."""
    from PIL import Image

    from greenmim_mm.datasets import demo_data
    demo = load_tool('demo')
    data, work = tmp_path / 'data', tmp_path / 'work'
    demo_data.generate(str(data), size=128, train_per_class=8, val_per_class=1, det_train=1,
                            det_val=1, verbose=False)
    losses = demo.main(['--data-root', str(data), '--work-dir', str(work), '--max-epochs', '1'])
    assert len(losses) >= 1 and all(l > 0 for _, l in losses)
    assert (work / 'epoch_1.pth').is_file()
    picture = Image.open(work / 'reconstruction.png')
    assert picture.size[0] > picture.size[1] > 128  # a grid of several 128-px images, 3 rows
    assert 'GreenMIM demo: loss' in capsys.readouterr().out

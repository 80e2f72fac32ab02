"""tools/convert_checkpoint.py and greenmim_mm.converters.

References, all independent of the converter: the source models themselves (our backbone for
``greenmim_mm``; timm's Swin, whose merge order is official Swin's, for ``timm``/``official-g3``),
straightforward official-layout merge functions written here (G1 row-first, G3 Swin order), stock
mmpretrain and mmdet Swins loading the output through their own ``init_cfg`` paths, and
mmpretrain's own load-time table resize. Tiny Swins (embed 16, depths 2,2,2,2), fp32 <= 1e-5.
"""
import argparse
import importlib.util
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import ConfigDict

from greenmim_mm.converters import MERGE_ORDERS, permute_merge
from greenmim_mm.models import GreenSwinTransformer

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(REPO, 'tools', 'convert_checkpoint.py')
TINY = dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])
TOL = 1e-5


def load_tool():
    spec = importlib.util.spec_from_file_location('convert_checkpoint_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = load_tool()


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is faster (and immune to other jobs on shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class NotAllowed:
    """A class the weights-only unpickler must refuse."""


def randomize(model: torch.nn.Module, seed: int = 0, matrices: bool = True) -> torch.nn.Module:
    """Random weights (norms around 1, tables large enough to matter); ``matrices=False`` keeps
    the model's own initialisation of weight matrices (faster for big models)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_table = 'relative_position_bias_table' in name
            if p.dim() > 1 and not is_table and not matrices:
                continue
            noise = torch.randn(p.shape, generator=gen)
            if is_table:
                p.copy_(0.5 * noise)
            elif p.dim() == 1 and 'norm' in name and name.endswith('weight'):
                p.copy_(1 + 0.2 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise * 0.5 / p[0].numel() ** 0.5)
    return model.eval()


def green(window=7, stage_cfgs=None, out_indices=(0, 1, 2, 3), arch=TINY, **kw):
    kwargs = dict(arch=arch, window_size=window, drop_path_rate=0.0, out_indices=out_indices,
                  attn_backend='sdpa', **kw)
    if stage_cfgs is not None:
        kwargs['stage_cfgs'] = stage_cfgs
    return GreenSwinTransformer(**kwargs)


def mmengine_checkpoint(backbone: torch.nn.Module) -> dict:
    """A dict shaped like an mmengine training checkpoint of our GreenMIM algorithm."""
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance('test_convert_checkpoint')
    hub.update_scalar('train/loss', 0.5)
    state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    state.update({'neck.decoder_embed.weight': torch.randn(8, 16), 'neck.mask_token':
                  torch.zeros(1, 1, 8), 'head.pred.weight': torch.randn(4, 8),
                  'mask_step': torch.tensor(7)})
    return {'meta': {'epoch': 1, 'iter': 7, 'seed': 0, 'mmengine_version': '0.10.7'},
            'state_dict': state, 'message_hub': hub.state_dict(),
            'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-3, 'params': [0]}]}}


def convert(tmp_path, src, ckpt, *extra, name='in.pth'):
    """Save ``ckpt``, run the tool's main in-process, return (output path, output dict)."""
    src_path, out_path = tmp_path / name, tmp_path / f'{name}.out.pth'
    torch.save(ckpt, src_path)
    assert tool.main(['--src', src, str(src_path), str(out_path), *extra]) == 0
    return out_path, torch.load(out_path, weights_only=True)


def stripped(out: dict) -> dict:
    assert set(out) == {'state_dict'}
    sd = out['state_dict']
    assert all(k.startswith('backbone.') for k in sd)
    return {k[len('backbone.'):]: v for k, v in sd.items()}


def max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


# ---------------------------------------------------------------------------- greenmim_mm
@pytest.fixture(scope='module')
def ours_converted(tmp_path_factory):
    """(source backbone, output path, output dict) for a greenmim_mm pre-training checkpoint."""
    torch.manual_seed(0)
    backbone = randomize(green())
    path, out = convert(tmp_path_factory.mktemp('ours'), 'greenmim_mm',
                        mmengine_checkpoint(backbone))
    return backbone, path, out


def test_greenmim_mm_keeps_exactly_the_backbone(ours_converted):
    backbone, _, out = ours_converted
    sd, ref = stripped(out), backbone.state_dict()
    assert sorted(sd) == sorted(ref)  # neck, head, mask_step, meta, optimizer... all dropped
    for k in ref:
        assert torch.equal(sd[k], ref[k]), k


def test_greenmim_mm_output_loads_in_ours_mmpretrain_and_mmdet(ours_converted):
    """(1) ours and (2) mmpretrain via init_cfg prefix='backbone.', (3) mmdet with
    convert_weights=False (its init_weights strips 'backbone.' itself, ignores prefix, and reads
    init_cfg.checkpoint as an attribute, so the config must be a ConfigDict, as in real configs).
    """
    from mmdet.models.backbones import SwinTransformer as MMDetSwin
    from mmpretrain.models import SwinTransformer as MMPretrainSwin
    backbone, path, out = ours_converted
    sd = stripped(out)
    init = dict(type='Pretrained', checkpoint=str(path), prefix='backbone.')
    ours = green(init_cfg=init)
    mmpre = MMPretrainSwin(arch=TINY, window_size=7, drop_path_rate=0.0,
                           out_indices=(0, 1, 2, 3), init_cfg=init)
    mmdet = MMDetSwin(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), window_size=7,
                      drop_path_rate=0.0, out_indices=(0, 1, 2, 3), convert_weights=False,
                      init_cfg=ConfigDict(type='Pretrained', checkpoint=str(path)))
    for model in (ours, mmpre, mmdet):
        model.init_weights()
        model.eval()
        loaded = model.state_dict()
        assert sorted(loaded) == sorted(sd)
        assert all(torch.equal(loaded[k], sd[k]) for k in sd), type(model)
    torch.manual_seed(1)
    x = torch.randn(1, 3, 256, 320)  # maps 64x80 .. 8x10: none equals the window
    with torch.no_grad():
        ref = backbone(x)
        assert max_diff(ours(x), ref) <= TOL
        assert max_diff(mmpre(x), ref) <= TOL
        assert max_diff(mmdet(x), ref) <= TOL
        # At 224 the last map is 7x7 = the window: mmdet keeps the shift, mmpretrain/ours drop it.
        x = torch.randn(1, 3, 224, 224)
        ref, theirs = backbone(x), mmdet(x)
    assert max_diff(theirs[:3], ref[:3]) <= TOL
    assert max_diff(theirs[3:], ref[3:]) > 1e-3


def test_cli_subprocess_converts(ours_converted, tmp_path):
    _, path, out = ours_converted
    result = tmp_path / 'cli.pth'
    proc = subprocess.run([sys.executable, TOOL, '--src', 'greenmim_mm',
                           str(path), str(result)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert 'saved' in proc.stdout
    again = torch.load(result, weights_only=True)['state_dict']
    assert sorted(again) == sorted(out['state_dict'])
    assert all(torch.equal(again[k], v) for k, v in out['state_dict'].items())


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        tool.main(['-h'])
    assert exc.value.code == 0
    assert '--stage-windows' in capsys.readouterr().out


# ---------------------------------------------------------------------------- merge order
def official_merge(x, norm_w, norm_b, reduction, layout):
    """Official PatchMerging on (B, H, W, C): G1/G2 concatenate row-first (0,0),(0,1),(1,0),(1,1),
    G3 / Swin (0,0),(1,0),(0,1),(1,1) — (row, col) offsets, neighbour-major."""
    x00, x01, x10, x11 = x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]
    parts = (x00, x01, x10, x11) if layout == 'official-g1' else (x00, x10, x01, x11)
    x = torch.cat(parts, -1)
    x = F.layer_norm(x, x.shape[-1:], norm_w, norm_b)
    return (x @ reduction.t()).flatten(1, 2)


@pytest.mark.parametrize('layout', ['official-g1', 'official-g3'])
def test_merge_permutation_matches_official_merge(layout):
    from mmcv.cnn.bricks.transformer import PatchMerging
    gen = torch.Generator().manual_seed(0)
    C, H, W = 6, 8, 10
    x = torch.randn(2, H, W, C, generator=gen)
    norm_w, norm_b = 1 + 0.3 * torch.randn(4 * C, generator=gen), torch.randn(4 * C, generator=gen)
    reduction = torch.randn(2 * C, 4 * C, generator=gen)
    ref = official_merge(x, norm_w, norm_b, reduction, layout)

    def ours(order):
        merge = PatchMerging(in_channels=C, out_channels=2 * C)
        merge.load_state_dict({'norm.weight': permute_merge(norm_w, order),
                               'norm.bias': permute_merge(norm_b, order),
                               'reduction.weight': permute_merge(reduction, order)})
        return merge(x.flatten(1, 2), (H, W))[0]

    with torch.no_grad():
        assert (ours(MERGE_ORDERS[layout]) - ref).abs().max() <= TOL
        other = 'official-g3' if layout == 'official-g1' else 'official-g1'
        assert (ours(MERGE_ORDERS[other]) - ref).abs().max() > 0.1  # the orders really differ


# ---------------------------------------------------------------------------- official / timm
def tiny_timm(seed=0):
    from timm.models.swin_transformer import SwinTransformer
    torch.manual_seed(seed)
    return randomize(SwinTransformer(img_size=224, embed_dim=16, depths=(2, 2, 2, 2),
                                     num_heads=(2, 2, 4, 4), window_size=7, num_classes=10), seed)


def timm_to_microsoft(model, g1=False) -> dict:
    """timm weights and buffers in the Microsoft layout (downsample at the end of a stage).

    ``g1``: merge weights rearranged so that the G1 row-first merge computes timm's merge.
    """
    out = {}
    for key, value in {**model.state_dict(), **dict(model.named_buffers())}.items():
        if '.downsample.' in key:
            i = int(key.split('.')[1])
            key = key.replace(f'layers.{i}.downsample', f'layers.{i - 1}.downsample')
            if g1:  # neighbour blocks 1 and 2 swap between the two orders
                value = value.reshape(*value.shape[:-1], 4, -1)[..., [0, 2, 1, 3], :].flatten(-2)
        out[key.replace('head.fc.', 'head.')] = value
    return out


@pytest.fixture(scope='module')
def timm_tiny_ref():
    model = tiny_timm()
    torch.manual_seed(2)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        return model, x, model.forward_features(x)


def check_against_timm(out, x, ref, arch=TINY):
    ours = green(out_indices=(3,), arch=arch).eval()
    ours.load_state_dict(stripped(out), strict=True)
    with torch.no_grad():
        feat = ours(x)[0].permute(0, 2, 3, 1)
    assert (feat - ref).abs().max().item() <= TOL


@pytest.mark.parametrize('src,packaging', [('official-g3', 'pretrain'), ('official-g1', 'pretrain'),
                                           ('official-g3', 'extracted')])
def test_official_matches_official_layout_reference(timm_tiny_ref, tmp_path, src, packaging):
    """A GreenMIM official checkpoint (encoder. prefix, decoder, mask token, buffers, args
    Namespace) or an extract_backbone.py output, converted, computes the reference's features."""
    model, x, ref = timm_tiny_ref
    encoder = timm_to_microsoft(model, g1=src == 'official-g1')
    if packaging == 'extracted':
        ckpt = {k: v for k, v in encoder.items() if not k.startswith('head.')
                and not k.endswith(('relative_position_index', 'attn_mask'))}
    else:
        weights = {f'encoder.{k}': v for k, v in encoder.items() if not k.startswith('head.')}
        weights.update({'mask_token': torch.zeros(1, 1, 16), 'decoder_embed.weight':
                        torch.randn(8, 128), 'decoder_pred.weight': torch.randn(48, 8)})
        ckpt = {'model': weights, 'optimizer': {'state': {}, 'param_groups': []}, 'epoch': 3,
                'args': argparse.Namespace(model='swin_tiny', mask_ratio=0.75)}
    _, out = convert(tmp_path, src, ckpt)
    check_against_timm(out, x, ref)


def test_timm_swin_tiny_matches_forward_features(tmp_path):
    """timm swin_tiny_patch4_window7_224 (random, no download) -> arch='tiny' window 7: our dense
    path after norm3 equals timm's forward_features; a Microsoft-format copy converts identically.
    """
    import timm
    torch.manual_seed(0)
    model = randomize(timm.create_model('swin_tiny_patch4_window7_224', pretrained=False),
                      matrices=False)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = model.forward_features(x)
    _, out = convert(tmp_path, 'timm', model.state_dict())
    check_against_timm(out, x, ref, arch='tiny')
    _, old = convert(tmp_path, 'timm', {'model': timm_to_microsoft(model)}, name='ms.pth')
    assert sorted(old['state_dict']) == sorted(out['state_dict'])
    assert all(torch.equal(old['state_dict'][k], v) for k, v in out['state_dict'].items())


# ---------------------------------------------------------------------------- windows
def table_key(i, j=0):
    return f'stages.{i}.blocks.{j}.attn.w_msa.relative_position_bias_table'


def centre(window):
    return (window - 1) * (2 * window - 1) + (window - 1)  # row of offset (0, 0)


def test_window_6_to_7_loads_strictly_and_matches_mmpretrain_resize(tmp_path):
    from mmpretrain.models import SwinTransformer as MMPretrainSwin
    torch.manual_seed(0)
    src = randomize(green(window=6, img_size=192))
    _, out = convert(tmp_path, 'greenmim_mm', mmengine_checkpoint(src), '--window', '7')
    sd = stripped(out)
    fresh = green(window=7).state_dict()
    target = green(window=7)
    target.load_state_dict(sd, strict=True)
    # mmpretrain's own load hook resizes the same way (it deletes the index; hence not strict)
    theirs = MMPretrainSwin(arch=TINY, window_size=7, out_indices=(0, 1, 2, 3))
    theirs.load_state_dict(src.state_dict(), strict=False)
    ref = src.state_dict()
    for k in sd:
        if k.endswith('relative_position_index'):
            assert sd[k].shape == (49, 49) and torch.equal(sd[k], fresh[k])
        elif k.endswith('relative_position_bias_table'):
            assert sd[k].shape == (169, ref[k].shape[1])
            assert torch.allclose(sd[k][centre(7)], ref[k][centre(6)], atol=1e-6)
            assert torch.allclose(sd[k], theirs.state_dict()[k], atol=1e-6)
        else:
            assert torch.equal(sd[k], ref[k]), k


def test_stage_windows_from_official(timm_tiny_ref, tmp_path):
    model, _, _ = timm_tiny_ref
    _, out = convert(tmp_path, 'official-g3', {'model': timm_to_microsoft(model)},
                     '--stage-windows', '14,14,14,7')
    sd = stripped(out)
    windows = (14, 14, 14, 7)
    target = green(stage_cfgs=[dict(window_size=w) for w in windows], out_indices=(3,))
    target.load_state_dict(sd, strict=True)
    src = model.state_dict()
    for i, w in enumerate(windows):
        theirs = src[f'layers.{i}.blocks.0.attn.relative_position_bias_table']
        assert sd[table_key(i)].shape[0] == (2 * w - 1) ** 2
        assert torch.allclose(sd[table_key(i)][centre(w)], theirs[centre(7)], atol=1e-6)
    assert torch.equal(sd[table_key(3)], src['layers.3.blocks.0.attn.relative_position_bias_table'])


# ---------------------------------------------------------------------------- errors
def run_error(tmp_path, src, ckpt, *extra):
    with pytest.raises(SystemExit) as exc:
        convert(tmp_path, src, ckpt, *extra)
    return str(exc.value.code)


def test_error_missing_and_unreadable_files(tmp_path):
    with pytest.raises(SystemExit, match='not found'):
        tool.main(['--src', 'timm', str(tmp_path / 'nope.pth'), str(tmp_path / 'o.pth')])
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'this is not a checkpoint')
    with pytest.raises(SystemExit, match='cannot read'):
        tool.main(['--src', 'greenmim_mm', str(garbage), str(tmp_path / 'o.pth')])
    message = run_error(tmp_path, 'official-g3', {'model': {}, 'x': NotAllowed()})
    assert 'cannot read' in message and 'NotAllowed, which is not allowed' in message


def test_error_wrong_source_layouts(timm_tiny_ref, tmp_path):
    model, _, _ = timm_tiny_ref
    official = {'model': {f'encoder.{k}': v for k, v in timm_to_microsoft(model).items()}}
    message = run_error(tmp_path, 'greenmim_mm', official)
    assert "expected keys 'backbone.patch_embed.projection.weight'" in message
    assert 'found keys' in message and 'encoder.layers.0' in message and 'official' in message
    message = run_error(tmp_path, 'official-g3', model.state_dict())
    assert 'Microsoft layout' in message and 'layers.1.downsample' in message
    assert 'looks like --src timm' in message
    message = run_error(tmp_path, 'timm', mmengine_checkpoint(green()))
    assert "expected Microsoft/timm Swin keys 'patch_embed.proj.weight'" in message
    assert 'backbone.stages.0' in message and 'looks like --src greenmim_mm' in message


def test_error_incompatible_keys_and_windows(timm_tiny_ref, tmp_path):
    model, _, _ = timm_tiny_ref
    weights = timm_to_microsoft(model)
    weights['layers.0.blocks.0.attn.logit_scale'] = torch.zeros(2, 1, 1)  # Swin V2
    message = run_error(tmp_path, 'official-g3', weights)
    assert 'no counterpart' in message and 'layers.0.blocks.0.attn.logit_scale' in message
    message = run_error(tmp_path, 'official-g3', timm_to_microsoft(model),
                        '--stage-windows', '7,7,7')
    assert '3 stage windows given for a Swin with 4 stages' in message
    with pytest.raises(SystemExit) as exc:
        tool.main(['--src', 'timm', 'a', 'b', '--window', '7', '--stage-windows', '7,7,7,7'])
    assert exc.value.code == 2  # argparse: mutually exclusive

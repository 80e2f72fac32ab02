"""Converter: which Twins file is which, and our LocalMIM Twins / ViT checkpoints
(issue 20 items 2 and 4).

* ``--src official-twins`` tells an official GreenMIM Twins pre-training file (PEG without the
  residual) from a Twins classification file (Meituan-AutoML/Twins ``alt_gvt_*.pth``: PEG with
  the residual, classifier head, torch-layout convolutions) and converts each correctly, or
  refuses naming the right ``--src``; ``--src timm-twins`` refuses a GreenMIM pre-training file.
* ``--src localmim`` (the README's command) takes our LocalMIM Twins and ViT checkpoints.

References: timm's ``Twins`` (the Twins classifier's architecture and key layout; Meituan's
``alt_gvt`` state dicts use the same keys) and the official GreenMIM PEG written in
test_twins_transfer (no residual); mmpretrain's ``SVT`` and ``VisionTransformer`` built from
the converted files, against our backbones' dense paths. fp32 tolerance 1e-5.
"""
import pytest
import torch
from mmpretrain.models.backbones import SVT, VisionTransformer

import greenmim_mm  # noqa: F401
from greenmim_mm.converters import ConversionError, convert_checkpoint
from greenmim_mm.models import GreenTwinsSVT
from test_convert_checkpoint import convert, one_thread, stripped  # noqa: F401
from test_localmim_twins import nano_twins_localmim
from test_localmim_vit import ARCH, tiny_vit_localmim
from test_twins_transfer import OfficialPEG, official_state_dict, ours_for_timm, timm_twins

TOL = 1e-5
X224 = 224  # maps 56/28/14/7: no LSA padding (timm pads unmasked)


def forward_timm(model, x):
    with torch.no_grad():
        return model.forward_features(x)


def forward_ours(sd, x):
    with torch.no_grad():
        return ours_for_timm(sd)(x)[-1].flatten(2).transpose(1, 2)


def official_greenmim_twins():
    """timm's Twins with the official GreenMIM PEG (no residual): the reference model of an
    official GreenMIM Twins pre-training checkpoint."""
    model = timm_twins()
    for i, peg in enumerate(model.pos_block):
        model.pos_block[i] = OfficialPEG(peg.proj[0])
    return model


# ----------------------------------------------------------------------------- item 2
@pytest.mark.parametrize('wrapped', [True, False], ids=['model', 'bare'])
def test_official_twins_converts_a_twins_classification_file_without_folding(tmp_path, wrapped):
    """A Twins classification checkpoint (PEG with residual, classifier head, torch-layout
    convolutions; Meituan's files hold the state dict under 'model'): converted as timm-twins
    with a note; the output equals the classifier's features. Before: exit 0 with every PEG
    centre tap 1 too small (outputs off by O(1))."""
    classifier = timm_twins()
    sd = classifier.state_dict()
    _, out = convert(tmp_path, 'official-twins', {'model': sd} if wrapped else sd)
    x = torch.randn(2, 3, X224, X224)
    ref = forward_timm(classifier, x)
    assert (forward_ours(out['state_dict'], x) - ref).abs().max().item() <= TOL
    _, notes = convert_checkpoint({'model': sd}, 'official-twins')
    assert any('Twins classification checkpoint' in n and 'head.weight' in n
               and 'converted as --src timm-twins' in n for n in notes), notes
    assert not any('folded' in n for n in notes)


@pytest.mark.parametrize('form', ['encoder', 'extracted'])
def test_official_twins_folds_a_greenmim_pretraining_file(form):
    """The official GreenMIM pre-training file (encoder. keys with decoder, or the backbone
    extracted by its util/extract_backbone.py: no prefix, spconv-layout weights): PEG residual
    folded; the output equals the official model's features."""
    official = official_greenmim_twins()
    encoder = official_state_dict(official, 'spconv')
    if form == 'encoder':
        ckpt = {'model': {**{f'encoder.{k}': v for k, v in encoder.items()},
                          'mask_token': torch.zeros(1, 1, 8)}}
    else:
        ckpt = {'model': {k: v for k, v in encoder.items() if not k.startswith('head.')}}
    sd, notes = convert_checkpoint(ckpt, 'official-twins')
    assert any('folded into 4 kernels' in n for n in notes), notes
    x = torch.randn(2, 3, X224, X224)
    assert (forward_ours(sd, x) - forward_timm(official, x)).abs().max().item() <= TOL


def test_timm_twins_refuses_a_greenmim_pretraining_file():
    encoder = official_state_dict(official_greenmim_twins(), 'spconv')
    bare = {k: v for k, v in encoder.items() if not k.startswith('head.')}
    with pytest.raises(ConversionError, match=r'--src timm-twins: this is an official GreenMIM '
                       r'Twins pre-training checkpoint \(spconv-layout .*\), whose PEG has no '
                       r'residual: use --src official-twins'):
        convert_checkpoint(bare, 'timm-twins')
    with pytest.raises(ConversionError, match=r"pre-training keys \(encoder\..*use --src "
                       r'official-twins'):
        convert_checkpoint({'model': {f'encoder.{k}': v for k, v in bare.items()}}, 'timm-twins')


def test_official_twins_refuses_a_file_it_cannot_tell(tmp_path, load_tool, capsys):
    """A bare torch-layout backbone without a head could be either: one line naming
    --src timm-twins, nothing written."""
    sd = {k: v for k, v in timm_twins().state_dict().items() if not k.startswith('head.')}
    src, out = tmp_path / 'bare.pth', tmp_path / 'out.pth'
    torch.save(sd, src)
    with pytest.raises(SystemExit) as err:
        load_tool('convert_checkpoint').main(['--src', 'official-twins', str(src), str(out)])
    msg = str(err.value.code)
    assert msg.startswith('convert_checkpoint: error: --src official-twins: cannot tell')
    assert 'use --src timm-twins' in msg and '\n' not in msg
    assert not out.exists()


# ----------------------------------------------------------------------------- item 4
def test_localmim_converts_our_localmim_twins_checkpoint(tmp_path):
    """The README's `--src localmim` on our LocalMIM-Twins checkpoint (refused before with
    'keys outside the mmpretrain Swin layout'): the whole SVT backbone, decoders and heads
    dropped; mmpretrain's SVT built from it computes our backbone's last stage."""
    _, model = nano_twins_localmim()
    _, out = convert(tmp_path, 'localmim', {'state_dict': model.state_dict(),
                                            'meta': {'epoch': 1}})
    sd = stripped(out)
    backbone = {k[9:]: v for k, v in model.state_dict().items() if k.startswith('backbone.')}
    assert sorted(sd) == sorted(backbone)
    assert all(torch.equal(sd[k], backbone[k]) for k in sd)
    svt = SVT(arch=GreenTwinsSVT.arch_zoo['nano'], qkv_bias=True, out_indices=(3, ),
              norm_after_stage=[False, False, False, True], norm_cfg=dict(type='LN', eps=1e-6))
    svt.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        ref = svt.eval()(x)[-1]
        ours = model.backbone.eval()(x)[-1]
    assert ref.shape == (2, 256, 4, 4)
    assert (ours - ref).abs().max().item() <= TOL


def test_localmim_converts_our_localmim_vit_checkpoint(tmp_path):
    """`--src localmim` on our LocalMIM-ViT checkpoint: the MAEViT backbone in mmpretrain's
    VisionTransformer layout (as --src localmim-official-vit writes), loaded strictly by
    mmpretrain's VisionTransformer, which then computes our backbone's dense outputs."""
    model = tiny_vit_localmim()
    for src in ('localmim', 'greenmim_mm'):
        _, out = convert(tmp_path, src, {'state_dict': model.state_dict()}, name=f'{src}.pth')
        sd = stripped(out)
        backbone = {k[9:]: v for k, v in model.state_dict().items()
                    if k.startswith('backbone.')}
        assert sorted(sd) == sorted(backbone) and 'pos_embed' in sd
        vit = VisionTransformer(arch=ARCH, img_size=64, patch_size=16, out_indices=[1, 3],
                                final_norm=model.backbone.final_norm, out_type='raw')
        vit.load_state_dict(sd, strict=True)
        x = torch.randn(2, 3, 64, 64)
        vit.eval(), model.backbone.eval()  # (their train() returns None)
        with torch.no_grad():
            ref, ours = vit(x), model.backbone(x)
        picked = [ours[i] for i in (1, 3)]  # the tiny model outputs blocks 0-3
        assert max((a - b).abs().max().item() for a, b in zip(picked, ref)) <= TOL
    with pytest.raises(ConversionError, match='a ViT has no windows to set'):
        convert_checkpoint({'state_dict': model.state_dict()}, 'localmim', window=7)
    bad = dict(model.state_dict(), **{'backbone.layers.0.attn.rel_bias': torch.zeros(1)})
    with pytest.raises(ConversionError, match=r'--src localmim: keys outside the mmpretrain ViT '
                       r'layout .*layers\.0\.attn\.rel_bias'):
        convert_checkpoint({'state_dict': bad}, 'localmim')

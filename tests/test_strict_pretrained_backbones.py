"""Every backbone of ours loads ``init_cfg=dict(type='Pretrained', ...)`` strictly, as
GreenSwinTransformer does (issue 20 item 5), and a malformed init_cfg is a TypeError, as in
mmengine/mmpretrain (item 10).

Before: GreenTwinsSVT loaded a Swin file as nothing (mmengine's warning only) and PCPVT weights
(accepted by ``--src timm-twins``) with random LSA ``qkv``; LocalMIMMAEViT's own initialisation
overwrote the loaded position embedding, patch embedding and cls token; a malformed init_cfg
gave ``AttributeError: 'str' object has no attribute 'get'``.

References: the files' own tensors (what a load must give), timm's Twins (PCPVT) through the
converter, mmpretrain's SVT for the error type of a malformed init_cfg.
"""
import pytest
import torch
from mmpretrain.models.backbones import SVT, VisionTransformer

import greenmim_mm  # noqa: F401
from greenmim_mm.converters import convert_checkpoint
from greenmim_mm.models import GreenSwinTransformer, GreenTwinsSVT, LocalMIMMAEViT
from greenmim_mm.models.backbones.pretrained import PretrainedLoadError
from test_convert_checkpoint import one_thread  # noqa: F401 (autouse: one intra-op thread)
from test_localmim_twins import nano_twins_localmim
from test_localmim_vit import ARCH
from test_twins_transfer import TINY

NANO_SWIN = dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])


def save(tmp_path, state_dict, name):
    path = str(tmp_path / name)
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in state_dict.items()}}, path)
    return path


def pretrained(path):
    return dict(type='Pretrained', checkpoint=path, prefix='backbone.')


def randomized(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model


# ----------------------------------------------------------------------------- Twins
def test_twins_refuses_a_swin_file(tmp_path):
    path = save(tmp_path, GreenSwinTransformer(arch=NANO_SWIN).state_dict(), 'swin.pth')
    twins = GreenTwinsSVT(arch='nano', init_cfg=pretrained(path))
    with pytest.raises(PretrainedLoadError, match=rf"{path} \(keys under 'backbone\.'\) do not "
                       r'fit GreenTwinsSVT: .*missing: .*not in the model: '):
        twins.init_weights()


def test_twins_refuses_pcpvt_weights_the_converter_accepts(tmp_path):
    """timm's PCPVT (GSA ``q``/``kv`` in every block) converts with --src timm-twins, but SVT's
    LSA blocks have ``qkv``: refused, naming the missing qkv and the unexpected q/kv."""
    from timm.models.twins import Twins
    pcpvt = Twins(patch_size=4, num_classes=0, **TINY)  # no wss: PCPVT
    sd, _ = convert_checkpoint(pcpvt.state_dict(), 'timm-twins')
    path = str(tmp_path / 'pcpvt.pth')
    torch.save({'state_dict': sd}, path)
    twins = GreenTwinsSVT(arch=dict(TINY, patch_sizes=[4, 2, 2, 2], strides=[4, 2, 2, 2],
                                    window_sizes=[7] * 4),
                          qkv_bias=True, norm_after_stage=[False, False, False, True],
                          init_cfg=pretrained(path))
    with pytest.raises(PretrainedLoadError, match=r'missing: stages\.0\.0\.attn\.qkv\.weight.*'
                       r'not in the model: stages\.0\.0\.attn\.q\.weight'):
        twins.init_weights()


def test_twins_loads_our_checkpoint_strictly_keeping_norms_it_lacks(tmp_path):
    """Our LocalMIM-Twins checkpoint, converted, into the detection configuration (every stage
    normalised): every tensor of the file is loaded; norm_after_stage0-2, absent from the
    pre-training, keep their initial values (ones, zeros)."""
    _, model = nano_twins_localmim()
    randomized(model)
    sd, _ = convert_checkpoint({'state_dict': model.state_dict()}, 'localmim')
    path = str(tmp_path / 'ours.pth')
    torch.save({'state_dict': sd}, path)
    twins = GreenTwinsSVT(arch='nano', qkv_bias=True, norm_after_stage=True,
                          norm_cfg=dict(type='LN', eps=1e-6), init_cfg=pretrained(path))
    twins.init_weights()
    state = twins.state_dict()
    assert all(torch.equal(state[k[9:]], v) for k, v in sd.items())
    extra = sorted(set(state) - {k[9:] for k in sd})
    assert extra == [f'norm_after_stage{i}.{p}' for i in range(3) for p in ('bias', 'weight')]
    assert all(torch.equal(state[k], torch.ones_like(state[k]) if k.endswith('weight')
                           else torch.zeros_like(state[k])) for k in extra)


# ----------------------------------------------------------------------------- ViT
def test_localmim_vit_loads_a_vit_file_without_reinitialising_it(tmp_path):
    """mmpretrain's VisionTransformer weights into LocalMIMMAEViT: every tensor is the file's
    (MAEViT's init_weights re-drew pos_embed, the patch embedding and cls token after the load)."""
    vit = randomized(VisionTransformer(arch=ARCH, img_size=64, patch_size=16))
    path = save(tmp_path, vit.state_dict(), 'vit.pth')
    ours = LocalMIMMAEViT(arch=ARCH, img_size=64, patch_size=16, init_cfg=pretrained(path))
    ours.init_weights()
    state = ours.state_dict()
    assert sorted(state) == sorted(vit.state_dict())
    assert all(torch.equal(state[k], v) for k, v in vit.state_dict().items())


def test_localmim_vit_refuses_a_swin_file(tmp_path):
    path = save(tmp_path, GreenSwinTransformer(arch=NANO_SWIN).state_dict(), 'swin.pth')
    ours = LocalMIMMAEViT(arch=ARCH, img_size=64, patch_size=16, init_cfg=pretrained(path))
    with pytest.raises(PretrainedLoadError, match='do not fit LocalMIMMAEViT'):
        ours.init_weights()


# ----------------------------------------------------------------------------- malformed
BACKBONES = {
    'swin': lambda init_cfg: GreenSwinTransformer(arch=NANO_SWIN, init_cfg=init_cfg),
    'twins': lambda init_cfg: GreenTwinsSVT(arch='nano', init_cfg=init_cfg),
    'vit': lambda init_cfg: LocalMIMMAEViT(arch=ARCH, img_size=64, init_cfg=init_cfg),
}


@pytest.mark.parametrize('init_cfg', [5, 'work_dirs/pretrain.pth', ['a.pth', 'b.pth']],
                         ids=['int', 'path', 'list-of-str'])
@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_malformed_init_cfg_is_a_type_error(name, init_cfg):
    with pytest.raises(TypeError, match=r"init_cfg must be a dict or a list of dicts, e\.g\. "
                       r"dict\(type='Pretrained', .*is not a dict\)"):
        BACKBONES[name](init_cfg).init_weights()


def test_mmpretrains_own_backbone_raises_type_error_for_an_int_init_cfg():
    """The reference error type (mmengine's BaseModule iterating the init_cfg)."""
    with pytest.raises(TypeError):
        SVT(arch='small', init_cfg=5).init_weights()


def test_train_tool_prints_a_refused_pretrained_file_as_one_line(tmp_path, demo_data_factory):
    """A Swin file given to the Twins fine-tuning demo through `tools/train.py`: exit with the
    one-line PretrainedLoadError (before: the error at the end of a traceback)."""
    import os.path as osp

    from greenmim_mm.apis import launch
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    data = demo_data_factory('strict_pretrained', train_per_class=1, val_per_class=1)
    path = save(tmp_path, GreenSwinTransformer(arch=NANO_SWIN).state_dict(), 'swin.pth')
    argv = [osp.join(root, 'configs', 'finetune', 'greentwins-nano_greenmim-pt_demo-cls_128px.py'),
            '--work-dir', str(tmp_path / 'work'), '--cfg-options',
            f'model.backbone.init_cfg.checkpoint={path}', 'train_cfg.max_epochs=1',
            f'train_dataloader.dataset.data_root={data}',
            f'val_dataloader.dataset.data_root={data}']
    with pytest.raises(SystemExit) as err:
        launch.main_train(argv)
    msg = err.value.code
    assert msg.startswith(f"train: error: pretrained weights {path} (keys under 'backbone.') do "
                          'not fit GreenTwinsSVT: 140 missing: patch_embeds.0.projection.weight')
    assert '\n' not in msg and 'set strict=False' in msg
    assert not list((tmp_path / 'work').glob('*.pth'))

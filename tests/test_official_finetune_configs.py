"""The fine-tuning configs the released checkpoints feed that had none: GreenMIM Swin-B window 14
and LocalMIM ViT-B/16. Each builds, has the recipe it states, and takes the converted weights of
the matching released layout (random tensors in that layout) with every tensor in place."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from greenmim_mm.converters import convert_checkpoint

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
FT = osp.join(ROOT, 'configs', 'finetune')
SWIN_B_W14 = osp.join(FT, 'greenswin-base-w14_8xb128-amp-100e_in1k-224px.py')
SWIN_B_W7 = osp.join(FT, 'greenswin-base-w7_8xb128-amp-100e_in1k-224px.py')
VIT_B = osp.join(FT, 'localmim-vit-base-p16_8xb128-amp-100e_in1k-224px.py')


def build(cfg):
    from mmpretrain.registry import MODELS
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    return MODELS.build(cfg.model)


def save_converted(state_dict, path):
    torch.save({'state_dict': state_dict}, path)
    return str(path)


def test_swin_b_w14_config_is_the_w7_recipe_with_the_pretraining_windows(tmp_path):
    from timm.models.swin_transformer import SwinTransformer

    from test_convert_checkpoint import timm_to_microsoft  # Microsoft layout, G1 merge order
    cfg, w7 = Config.fromfile(SWIN_B_W14), Config.fromfile(SWIN_B_W7)
    assert cfg.optim_wrapper == w7.optim_wrapper and cfg.param_scheduler == w7.param_scheduler
    assert cfg.train_dataloader.batch_size == w7.train_dataloader.batch_size == 128
    # the released GreenMIM Swin-B w14 layout (Microsoft Swin keys under 'encoder.', row-first
    # merge channels; the 7x7 last stage holds one 7x7 window, as timm and Microsoft clip it)
    torch.manual_seed(0)
    swin = SwinTransformer(img_size=224, embed_dim=128, depths=(2, 2, 18, 2),
                           num_heads=(4, 8, 16, 32), window_size=14, num_classes=0)
    official = {'encoder.' + k: v for k, v in timm_to_microsoft(swin, g1=True).items()}
    sd, _ = convert_checkpoint({'model': official}, 'official-g1', stage_windows=[14, 14, 14, 7])
    cfg.model.backbone.init_cfg.checkpoint = save_converted(sd, tmp_path / 'w14.pth')
    model = build(cfg)
    windows = [stage.blocks[0].attn.w_msa.window_size for stage in model.backbone.stages]
    assert [tuple(w) for w in windows] == [(14, 14), (14, 14), (14, 14), (7, 7)]
    model.init_weights()  # strict: every converted tensor fits (else PretrainedLoadError)
    ours = model.backbone.state_dict()
    for key, value in sd.items():
        assert torch.equal(ours[key[len('backbone.'):]], value), key


def test_localmim_vit_b_config_recipe_and_official_weights(tmp_path):
    from timm.models.vision_transformer import VisionTransformer as TimmViT
    cfg = Config.fromfile(VIT_B)
    assert cfg.optim_wrapper.optimizer.lr == 2e-3
    assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.65
    assert cfg.train_dataloader.batch_size == 128 and cfg.auto_scale_lr.base_batch_size == 1024
    warmup, cosine = cfg.param_scheduler
    assert (warmup.end, cosine.begin, cosine.end, cosine.eta_min) == (20, 20, 100, 1e-5)
    assert cfg.model.backbone.drop_path_rate == 0.1 and cfg.model.backbone.final_norm is False
    assert cfg.model.backbone.out_type == 'avg_featmap'
    # the released LocalMIM ViT-B layout: timm/MAE keys plus per-head norms, decoders, HOG convs
    torch.manual_seed(0)
    timm_vit = TimmViT(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                       num_classes=0)
    official = {k: v for k, v in timm_vit.state_dict().items() if not k.startswith('norm.')}
    for k in range(4):
        official[f'norm.{k}.weight'], official[f'norm.{k}.bias'] = torch.ones(768), torch.zeros(768)
    official['mask_token'] = torch.zeros(1, 1, 768)
    sd, _ = convert_checkpoint({'model': official}, 'localmim-official-vit')
    cfg.model.backbone.init_cfg.checkpoint = save_converted(sd, tmp_path / 'vit.pth')
    model = build(cfg)
    model.init_weights()
    ours = model.backbone.state_dict()
    assert set(sd) <= {f'backbone.{k}' for k in ours}
    for key, value in sd.items():
        assert torch.equal(ours[key[len('backbone.'):]], value), key
    logits = model(torch.randn(1, 3, 224, 224), mode='tensor')
    assert logits.shape == (1, 1000)

# UperNet + GreenMIM/LocalMIM-pre-trained Swin-B (window 7) on ADE20K, 512x512 crops, 160k
# iterations, 8 GPUs x 2 images, AMP (fp16, dynamic loss scale; the official recipe is fp32).
# Recipe: the official LocalMIM Swin-B segmentation config (LocalMIM's official code,
# semantic_segmentation/configs/upernet_swin_base_12_512_slide_160k_ade20k.py, mmseg 0.11):
# AdamW lr 6e-5, betas (0.9, 0.999), wd 0.01 (none on absolute_pos_embed,
# relative_position_bias_table, norms), drop path 0.3, linear warm-up 1500 iterations from 1e-6
# then poly (power 1, min 0), UPerHead 512 channels + auxiliary FCNHead on stage 3 (weight 0.4),
# SyncBN, whole-image inference (its model base keeps test_cfg mode='whole'). These are also
# mmseg 1.2.2's Swin UperNet settings, so the base is mmseg's own Swin-B config; we replace its
# backbone with our GreenSwinTransformer (mmpretrain's Swin, same state dict), reached from mmseg's
# scope through custom_imports + the `greenmim_mm.` prefix.
_base_ = 'mmseg::swin/swin-base-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['greenmim_mm', 'greenmim_mm.segmentation'],
                      allow_failed_imports=False)

# Backbone weights converted from a pre-training checkpoint (placeholder: point it at yours, e.g.
# `--cfg-options model.backbone.init_cfg.checkpoint=PATH`):
#   python tools/convert_checkpoint.py --src greenmim_mm \
#       work_dirs/greenmim_swin-base-w7_8xb256-amp-800e_in1k-224px/epoch_800.pth \
#       work_dirs/greenmim_swin-base-w7_8xb256-amp-800e_in1k-224px/backbone_converted.pth
# (--src localmim for our LocalMIM Swin-B pre-training, localmim-official-swin / official-g1 /
# official-g3 for the official LocalMIM / GreenMIM weights). norm0-norm2 are not in such a file
# (pre-training normalises the last stage only) and start from LayerNorm's default init.
pretrained = 'work_dirs/greenmim_swin-base-w7_8xb256-amp-800e_in1k-224px/backbone_converted.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='greenmim_mm.GreenSwinTransformer',
        arch='base',  # embed 128, depths (2, 2, 18, 2), heads (4, 8, 16, 32)
        img_size=224,  # pre-training size (no absolute position embedding: any input size)
        window_size=7,
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        pad_small_map=True,  # any input size; shifted windows kept where a map equals the window
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    decode_head=dict(in_channels=[128, 256, 512, 1024], num_classes=150),
    auxiliary_head=dict(in_channels=512, num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.),
            'relative_position_bias_table': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.)
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False)
]
train_dataloader = dict(batch_size=2)  # x 8 GPUs = 16 images per iteration

# Atomic checkpoints in greenmim_mm's plain (weights-only loadable) format.
default_hooks = dict(checkpoint=dict(type='greenmim_mm.SafeCheckpointHook'))
# Stop at the first NaN/inf loss, before any checkpoint of it (greenmim_mm.engine).
custom_hooks = [dict(type='greenmim_mm.NonFiniteLossHook')]

# Mask R-CNN + FPN on COCO with a GreenMIM-pre-trained Swin-B (window 7), 1x schedule (12 epochs).
# mmdet 3.3's Swin recipe (mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py): AdamW lr 1e-4,
# betas (0.9, 0.999), wd 0.05 (none on norms, relative_position_bias_table, absolute_pos_embed),
# warm-up 1000 iterations, steps at epochs 8 and 11; 8 GPUs x 2 images. The backbone is our
# GreenSwinTransformer on its dense path (mmpretrain's SwinTransformer, same state dict), reached
# from mmdet's scope through custom_imports + the `greenmim_mm.` prefix.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['greenmim_mm'], allow_failed_imports=False)

# Backbone weights converted from a pre-training checkpoint (placeholder: point it at yours, e.g.
# `--cfg-options model.backbone.init_cfg.checkpoint=PATH`):
#   python tools/convert_checkpoint.py --src greenmim_mm \
#       work_dirs/greenmim_swin-base-w7_8xb256-amp-800e_in1k-224px/epoch_800.pth \
#       work_dirs/greenmim_swin-base-w7_8xb256-amp-800e_in1k-224px/backbone_converted.pth
# (--src official-g1 / official-g3 / timm for the official GreenMIM, SimMIM or timm weights).
# The file holds {'state_dict': {'backbone.<key>': ...}}; `prefix='backbone.'` strips it.
# norm0-norm2 are not in it (pre-training only has norm3) and start from LayerNorm's default init.
pretrained = 'work_dirs/greenmim_swin-base-w7_8xb256-amp-800e_in1k-224px/backbone_converted.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='greenmim_mm.GreenSwinTransformer',
        arch='base',  # embed 128, depths (2, 2, 18, 2), heads (4, 8, 16, 32)
        window_size=7,
        drop_path_rate=0.3,  # Swin-B's detection setting
        out_indices=(0, 1, 2, 3),
        pad_small_map=True,  # any input size; shifted windows kept where a map equals the window
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[128, 256, 512, 1024]))

# Same as the base, spelled out: no weight decay on norms, tables and absolute position embedding.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.),
            'relative_position_bias_table': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.)
        }))

# Atomic checkpoints in greenmim_mm's plain (weights-only loadable) format.
default_hooks = dict(checkpoint=dict(type='greenmim_mm.SafeCheckpointHook'))
# Stop at the first NaN/inf loss, before any checkpoint of it (greenmim_mm.engine).
custom_hooks = [dict(type='greenmim_mm.NonFiniteLossHook')]

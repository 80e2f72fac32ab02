# Mask R-CNN + FPN on COCO with a GreenMIM-pre-trained Swin-B (window 7), 3x schedule (36 epochs)
# with multi-scale training and random crops (DETR-style), as
# mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py: AdamW lr 1e-4, wd 0.05 (none on
# norms, relative_position_bias_table, absolute_pos_embed), steps at epochs 27 and 33.
# Backbone and weights as in mask-rcnn_greenswin-b-p4-w7_fpn_1x_coco.py.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
custom_imports = dict(imports=['greenmim_mm'], allow_failed_imports=False)

# Placeholder: the converted backbone (tools/convert_checkpoint.py, see the 1x config).
pretrained = 'work_dirs/greenmim_swin-base-w7_8xb256-amp-800e_in1k-224px/backbone_converted.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='greenmim_mm.GreenSwinTransformer',
        arch='base',
        window_size=7,
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        pad_small_map=True,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[128, 256, 512, 1024]))

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

# Demo: Mask R-CNN + FPN with the nano GreenSwinTransformer of the demo pre-training
# (configs/pretrain/greenmim_swin-nano_demo_128px.py) on the generated COCO-style shapes
# (`python tools/make_demo_data.py`: data/demo/coco, 128x128 images, 5 classes), on the CPU.
# mmdet's Swin Mask R-CNN (mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py) scaled down: 64-d
# FPN and heads, fewer sampled RoIs, 128-px inputs, 8 short epochs; AdamW with no weight decay on
# norms / relative position tables and layer-wise lr decay (greenmim_mm's constructor).
# Evaluated with CocoMetric (bbox + segm).
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['greenmim_mm', 'greenmim_mm.engine'], allow_failed_imports=False)

data_root = 'data/demo/coco/'
classes = ('circle', 'square', 'triangle', 'star', 'cross')
img_scale = (128, 128)
channels = 64  # FPN / head width (256 in the full-size model)
max_epochs = 8
# Converted demo pre-training (placeholder; set it with
# `--cfg-options model.backbone.init_cfg.checkpoint=PATH`, or `model.backbone.init_cfg=None` for
# random init):
#   python tools/convert_checkpoint.py --src greenmim_mm work_dirs/demo/epoch_16.pth \
#       work_dirs/demo/backbone_converted.pth
pretrained = 'work_dirs/demo/backbone_converted.pth'

model = dict(
    # 32 x window 4: an image of any aspect ratio (e.g. 96 x 128 after the resize) pads to maps of
    # whole windows (mmpretrain's Swin refuses maps smaller than the window without pad_small_map)
    data_preprocessor=dict(pad_size_divisor=128),
    backbone=dict(
        _delete_=True,
        type='greenmim_mm.GreenSwinTransformer',
        arch='nano',  # GreenSwinTransformer's demo size: embed 32, depths 2-2-2-2, heads 2-4-4-8
        img_size=128,
        window_size=4,  # maps 32/16/8/4 at 128 px, as in the pre-training
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=channels),
    rpn_head=dict(in_channels=channels, feat_channels=channels),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=channels),
        bbox_head=dict(in_channels=channels, fc_out_channels=256, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=channels),
        mask_head=dict(in_channels=channels, conv_out_channels=channels,
                       num_classes=len(classes))),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=100),
        rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    batch_sampler=None,
    dataset=dict(
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json',
                     metric=['bbox', 'segm'])
test_evaluator = val_evaluator

optim_wrapper = dict(
    type='OptimWrapper',
    constructor='greenmim_mm.SwinLayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=4e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        layer_decay_rate=0.9,
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.),
            'relative_position_bias_table': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.)
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min_ratio=0.01, by_epoch=True,
         begin=0, end=max_epochs, convert_to_iter_based=True)
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)

default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(type='greenmim_mm.SafeCheckpointHook', interval=max_epochs, max_keep_ckpts=1),
    visualization=dict(draw=False))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
log_processor = dict(window_size=10)
randomness = dict(seed=0)
# Stop at the first NaN/inf loss, before any checkpoint of it (greenmim_mm.engine).
custom_hooks = [dict(type='greenmim_mm.NonFiniteLossHook')]

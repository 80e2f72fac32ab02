# Demo: UperNet + the nano GreenSwinTransformer of the demo pre-training
# (configs/pretrain/greenmim_swin-nano_demo_128px.py) on the generated segmentation set
# (`python tools/make_demo_data.py`: data/demo/ade, 128x128 images, background + 5 shape classes,
# mmseg's ADE20K layout and labels), on the CPU in a few minutes.
# upernet_greenswin-b-p4-w7_8xb2-amp-160k_ade20k-512x512.py scaled down: 64-channel UPerHead,
# 32-channel auxiliary FCNHead, BN instead of SyncBN, 128-px crops, fp32, 800 iterations of 4
# images; AdamW with greenmim_mm's Swin layer-decay constructor, heads at 10x the top rate; OHEM
# pixel sampling; 20 warm-up iterations then poly. Measured: docs/segmentation.md (demo section).
_base_ = [
    'mmseg::_base_/models/upernet_swin.py', 'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py'
]
custom_imports = dict(imports=['greenmim_mm', 'greenmim_mm.segmentation'],
                      allow_failed_imports=False)

data_root = 'data/demo/ade/'
classes = ('background', 'circle', 'square', 'triangle', 'star', 'cross')
palette = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
           [245, 130, 48]]
crop_size = (128, 128)
max_iters = 800
warmup_iters = 20
norm_cfg = dict(type='BN', requires_grad=True)
# Converted demo pre-training (placeholder; set it with
# `--cfg-options model.backbone.init_cfg.checkpoint=PATH`, or `model.backbone.init_cfg=None` for
# random init):
#   python tools/convert_checkpoint.py --src greenmim_mm work_dirs/demo/epoch_16.pth \
#       work_dirs/demo/backbone_converted.pth
pretrained = 'work_dirs/demo/backbone_converted.pth'

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        _delete_=True,
        type='greenmim_mm.GreenSwinTransformer',
        arch='nano',  # GreenSwinTransformer's demo size: embed 32, depths 2-2-2-2, heads 2-4-4-8
        img_size=128,
        window_size=4,  # maps 32/16/8/4 at 128 px, as in the pre-training
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    # OHEM (mmseg's sampler, as its Cityscapes configs): the loss of the pixels whose class
    # probability is below 0.7, at least 4096 per image; background is 89 % of the pixels
    decode_head=dict(in_channels=[32, 64, 128, 256], channels=64, num_classes=len(classes),
                     norm_cfg=norm_cfg,
                     sampler=dict(type='OHEMPixelSampler', thresh=0.7, min_kept=4096)),
    auxiliary_head=dict(in_channels=128, channels=32, num_classes=len(classes),
                        norm_cfg=norm_cfg))

# BaseSegDataset with ADE20K's conventions (mmseg's ADE20KDataset refuses classes that are not
# ADE20K's): PNG images, label 0 = unlabelled -> 255 (ignored), 1..6 -> classes 0..5.
dataset = dict(
    type='BaseSegDataset',
    data_root=data_root,
    metainfo=dict(classes=classes, palette=palette),
    img_suffix='.png',
    seg_map_suffix='.png',
    reduce_zero_label=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(256, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**dataset, data_prefix=dict(img_path='images/training',
                                             seg_map_path='annotations/training'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**dataset, data_prefix=dict(img_path='images/validation',
                                             seg_map_path='annotations/validation'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='greenmim_mm.SwinLayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        layer_decay_rate=0.9,
        custom_keys={
            # the freshly initialised heads learn at 10x the backbone's top rate: at 1x they
            # learn only the background in 800 iterations (docs/segmentation.md)
            'decode_head': dict(lr_mult=10.),
            'auxiliary_head': dict(lr_mult=10.),
            'absolute_pos_embed': dict(decay_mult=0.),
            'relative_position_bias_table': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.)
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=warmup_iters, end=max_iters,
         by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type='greenmim_mm.SafeCheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=1),
    visualization=dict(type='SegVisualizationHook', draw=False))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
log_processor = dict(by_epoch=False, window_size=10)
randomness = dict(seed=0)
custom_hooks = [dict(type='greenmim_mm.NonFiniteLossHook')]

# Demo: a nano GreenSwinTransformer (dense path) classifying the generated demo shapes at 128 px,
# from random initialisation: the baseline of greenswin-nano_greenmim-pt_demo-cls_128px.py, which
# starts from the demo GreenMIM pre-training. Both use GreenMIM's fine-tuning recipe in miniature
# (GreenMIM's official code): AdamW betas (0.9, 0.999), wd 0.05 (none on norms, biases and relative
# position tables), layer-wise lr decay 0.9, drop path 0.1, label smoothing 0.1, linear warm-up
# then cosine, per iteration. Left out for the tiny data and short schedule: Mixup/CutMix,
# RandAugment, RandomErasing (see the ImageNet configs). `python tools/make_demo_data.py` makes
# the data. CPU: about 25 s an epoch on 2 cores (12 epochs, about 5 min).
default_scope = 'greenmim_mm'
data_root = 'data/demo/'
classes = ('circle', 'square', 'triangle', 'star', 'cross')
max_epochs = 12
warmup_epochs = 1

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='GreenSwinTransformer',
        arch='nano',  # GreenSwinTransformer's demo size: embed 32, depths 2-2-2-2, heads 2-4-4-8
        img_size=128,
        window_size=4,
        drop_path_rate=0.1),  # random init; the greenmim-pt variant adds a Pretrained init_cfg
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=len(classes),
        in_channels=256,
        init_cfg=None,  # the model's TruncNormal init below covers it
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original')),
    init_cfg=[
        dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
        dict(type='Constant', layer='LayerNorm', val=1., bias=0.)
    ])

data_preprocessor = dict(
    num_classes=len(classes),
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)

train_pipeline = [
    dict(type='LoadImageFromFileOrSkip'),  # unreadable files are skipped (SkippedSamplesHook)
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='LoadImageFromFileOrSkip'), dict(type='PackInputs')]

train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    # only with workers; said explicitly because mmpretrain's tools/train.py (mim train
    # mmpretrain) sets persistent_workers=True where a config leaves it out
    persistent_workers=False,
    # Seeded loading: augmentations are a function of (seed, epoch, sample, rank) (exact resume).
    sampler=dict(type='SeededSampler', shuffle=True),
    dataset=dict(
        type='CheckedCustomDataset',  # annotation file validated at build
        data_root=data_root,
        ann_file='meta/train.txt',
        data_prefix='train',
        metainfo=dict(classes=classes),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=64,
    num_workers=0,
    # only with workers; said explicitly because mmpretrain's tools/train.py (mim train
    # mmpretrain) sets persistent_workers=True where a config leaves it out
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='CheckedCustomDataset',
        data_root=data_root,
        ann_file='meta/val.txt',
        data_prefix='val',
        metainfo=dict(classes=classes),
        test_mode=True,  # an unreadable image is an error naming it, never replaced
        pipeline=test_pipeline))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

optim_wrapper = dict(
    # lr 3e-4 at batch 32: at 1e-3 the nano Swin stays at chance from random init (README)
    optimizer=dict(type='AdamW', lr=3e-4, betas=(0.9, 0.999), weight_decay=0.05),
    clip_grad=dict(max_norm=5.0),
    constructor='LearningRateDecayOptimWrapperConstructor',  # mmpretrain's
    paramwise_cfg=dict(
        layer_decay_rate=0.9,
        custom_keys={
            '.norm': dict(decay_mult=0.0),
            '.bias': dict(decay_mult=0.0),
            '.absolute_pos_embed': dict(decay_mult=0.0),
            '.relative_position_bias_table': dict(decay_mult=0.0)
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min_ratio=1e-2,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=10),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='SafeCheckpointHook', interval=1, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False))
# Stop at the first NaN/inf loss (before any checkpoint of it); count and bound skipped files.
custom_hooks = [
    dict(type='NonFiniteLossHook'),
    dict(type='SkippedSamplesHook', max_fraction=0.01),
]
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork'),
               dist_cfg=dict(backend='gloo'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)

# GreenMIM pre-training of a nano GreenSwinTransformer on the generated demo shapes (128 px, no
# labels). Sized for a CPU: about 4 minutes on 2 cores (`make demo`). The backbone is the one of
# configs/finetune/greenswin-nano_demo-cls_128px.py, so its checkpoint can initialise that.
# `python tools/make_demo_data.py` makes the data.
default_scope = 'greenmim_mm'
data_root = 'data/demo/'
img_size = 128
max_epochs = 16
warmup_epochs = 1
batch_size = 32

ln_cfg = dict(type='LN', eps=1e-6)
model = dict(
    type='GreenMIM',
    mask_ratio=0.75,
    backbone=dict(
        type='GreenSwinTransformer',
        arch='nano',  # GreenSwinTransformer's demo size: embed 32, depths 2-2-2-2, heads 2-4-4-8
        img_size=img_size,
        window_size=4,
        drop_path_rate=0.0,
        out_indices=(3, ),
        # Every encoder LayerNorm with eps 1e-6, as the official GreenMIM encoder (mmpretrain's
        # default is 1e-5): patch embedding, blocks, patch merging, output norm.
        norm_cfg=ln_cfg,
        patch_cfg=dict(norm_cfg=ln_cfg),
        stage_cfgs=dict(block_cfgs=dict(norm_cfg=ln_cfg), downsample_cfg=dict(norm_cfg=ln_cfg))),
    neck=dict(
        type='MAEUnitDecoder',
        in_channels=256,
        embed_dims=128,
        depth=1,
        num_heads=4,
        mlp_ratio=4,
        unit=32),
    head=dict(type='UnitReconstructionHead', loss='mse', norm_pix=True, unit=32),
    init_cfg=[
        dict(type='Xavier', layer='Linear', distribution='uniform'),
        dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0)
    ])

data_preprocessor = dict(
    type='SelfSupDataPreprocessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True,
    non_blocking=True)

train_pipeline = [
    dict(type='LoadImageFromFileOrSkip'),  # unreadable files are skipped (SkippedSamplesHook)
    dict(
        type='RandomResizedCrop',
        scale=img_size,
        crop_ratio_range=(0.2, 1.0),
        backend='pillow',
        interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    # only with workers; said explicitly because mmpretrain's tools/train.py (mim train
    # mmpretrain) sets persistent_workers=True where a config leaves it out
    persistent_workers=False,
    # Seeded loading: augmentations are a function of (seed, epoch, sample, rank), so
    # `--resume` continues exactly as an uninterrupted run (greenmim_mm.datasets).
    sampler=dict(type='SeededSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='CheckedCustomDataset',
        data_root=data_root,
        data_prefix='train',
        with_label=False,  # every image under train/, labels unused
        pipeline=train_pipeline))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1.5e-3, betas=(0.9, 0.95), weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys=dict(
            relative_position_bias_table=dict(decay_mult=0.0),
            mask_token=dict(decay_mult=0.0))))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=0.0, by_epoch=True,
         begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)

# LazyRuntimeInfoHook: mmengine's RuntimeInfoHook reading the losses from the device only when
# logged (logger interval, validation, checkpoints, epoch end), with the same logged values.
default_hooks = dict(
    runtime_info=dict(type='LazyRuntimeInfoHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=5),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='SafeCheckpointHook', interval=1, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False))
# Stop at the first NaN/inf loss (before any checkpoint of it; checked on the logging
# iterations, where the losses are read anyway); count and bound skipped files.
custom_hooks = [
    dict(type='NonFiniteLossHook', interval='logger'),
    dict(type='SkippedSamplesHook', max_fraction=0.01),
]
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork'),
               dist_cfg=dict(backend='gloo'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)
log_processor = dict(window_size=10)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)

# GreenMIM pre-training recipe (GreenMIM's official scripts), Swin-B window 7:
# ImageNet-1k train images (no labels), 224 px, one mask of 32-px units per GPU batch (ratio
# 0.75: 12 of 49 units visible), MAE-style decoder 512 x 1 block x 16 heads, norm-pix MSE on the
# masked units; AdamW betas (0.9, 0.95), wd 0.05 (none on norms, biases, relative position bias
# tables, the mask token); lr = blr * total_batch / 256 (auto_scale_lr); 40 warm-up epochs
# (linear, per iteration) then cosine to 0; 800 epochs; fp16 AMP, no gradient clipping.
# Variants override model.backbone (arch, windows) and model.neck.in_channels.
default_scope = 'greenmim_mm'
data_root = 'data/imagenet/'
img_size = 224
batch_size = 256  # per GPU; the official runs use 8 GPUs (2048 in total)
blr = 1e-4  # lr per 256 images
max_epochs = 800
warmup_epochs = 40

ln_cfg = dict(type='LN', eps=1e-6)
model = dict(
    type='GreenMIM',
    mask_ratio=0.75,
    backbone=dict(
        type='GreenSwinTransformer',
        arch='base',
        img_size=img_size,
        window_size=7,
        drop_path_rate=0.0,
        out_indices=(3, ),
        # Every encoder LayerNorm with eps 1e-6, as the official GreenMIM encoder (mmpretrain's
        # default is 1e-5): patch embedding, blocks, patch merging, output norm.
        norm_cfg=ln_cfg,
        patch_cfg=dict(norm_cfg=ln_cfg),
        stage_cfgs=dict(block_cfgs=dict(norm_cfg=ln_cfg), downsample_cfg=dict(norm_cfg=ln_cfg))),
    neck=dict(
        type='MAEUnitDecoder',
        in_channels=1024,
        embed_dims=512,
        depth=1,
        num_heads=16,
        mlp_ratio=4,
        unit=32),
    head=dict(type='UnitReconstructionHead', loss='mse', norm_pix=True, unit=32),
    # GreenMIM re-initialises every Linear xavier-uniform (zero bias) and LayerNorm to (1, 0);
    # relative position bias tables and the mask token keep their own init.
    init_cfg=[
        dict(type='Xavier', layer='Linear', distribution='uniform'),
        dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0)
    ])

data_preprocessor = dict(
    type='SelfSupDataPreprocessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True,
    non_blocking=True)  # images copied from the loader's pinned memory without a sync

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
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    # Seeded loading: augmentations are a function of (seed, epoch, sample, rank), so
    # `--resume` continues exactly as an uninterrupted run (greenmim_mm.datasets).
    sampler=dict(type='SeededSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='CheckedCustomDataset',
        data_root=data_root,
        data_prefix='train',  # data/imagenet/train/<class>/*.JPEG, scanned once at start-up
        with_label=False,
        pipeline=train_pipeline))

# The optimizer's lr is the lr at 256 images; auto_scale_lr multiplies it by
# (GPUs x batch_size) / 256, e.g. 8 x 256 -> 8e-4 (the official lr = blr * 2048 / 256).
# Mixed precision: bf16 autocast without a loss scaler (A100/H100 and newer; no GradScaler, whose
# overflow check reads the GPU every step). On fp16-only GPUs (V100, T4) override with
#   optim_wrapper = dict(type='AmpOptimWrapper', dtype='float16', loss_scale='dynamic')
optim_wrapper = dict(
    type='AutocastOptimWrapper',
    dtype='bfloat16',
    optimizer=dict(type='AdamW', lr=blr, betas=(0.9, 0.95), weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys=dict(
            relative_position_bias_table=dict(decay_mult=0.0),
            mask_token=dict(decay_mult=0.0))))
auto_scale_lr = dict(base_batch_size=256, enable=True)

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=0.0,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)

# LazyRuntimeInfoHook: mmengine's RuntimeInfoHook reading the losses from the device only when
# logged (logger interval, validation, checkpoints, epoch end), with the same logged values.
default_hooks = dict(
    runtime_info=dict(type='LazyRuntimeInfoHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='SafeCheckpointHook', interval=25, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False))
# Stop at the first NaN/inf loss (before any checkpoint of it; checked on the logging
# iterations, where the losses are read anyway); count and bound skipped files.
custom_hooks = [
    dict(type='NonFiniteLossHook', interval='logger'),
    dict(type='SkippedSamplesHook', max_fraction=0.01),
]
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)
log_level = 'INFO'
load_from = None
resume = False
# Masks are seeded by (this seed, rank, step), independently of diff_rank_seed.
randomness = dict(seed=0, diff_rank_seed=True)

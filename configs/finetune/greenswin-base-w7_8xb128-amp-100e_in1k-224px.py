# ImageNet-1k fine-tuning of a GreenMIM-pre-trained Swin-B (window 7, 224 px), GreenMIM's recipe
# (GreenMIM's official code: SimMIM's main_finetune.py with GreenMIM's ft_configs):
# 100 epochs (20 warm-up), AdamW betas (0.9, 0.999) eps 1e-8, wd 0.05 (none on norms, biases,
# absolute_pos_embed, relative position tables), base lr 1.25e-3 per 512 images (auto_scale_lr:
# 8 GPUs x 128 = 1024 -> 2.5e-3), layer-wise lr decay 0.9, drop path 0.1, gradient clipping 5.0,
# label smoothing 0.1, Mixup 0.8 / CutMix 1.0 (one of the two per batch, i.e. timm's switch prob
# 0.5), RandAugment rand-m9-mstd0.5-inc1, RandomErasing 0.25 (pixel mode), fp16 AMP; test: resize
# the short side to 256, centre crop 224.
#
# Built on mmpretrain's own Swin configs (model, ImageNet pipeline, runtime), so it runs under
# mmpretrain's scope: `mim train mmpretrain <this file>` as well as tools/train.py.
# ImageNet in mmpretrain's standard layout: data/imagenet/{train,val}/ with
# data/imagenet/meta/{train,val}.txt ("<relative path> <label>" per line).
#
# Layer-wise lr decay: mmpretrain's LearningRateDecayOptimWrapperConstructor asks
# ImageClassifier.get_layer_depth, which defers to the backbone; GreenSwinTransformer inherits
# mmpretrain SwinTransformer's rule, which is SimMIM's get_swin_layer exactly: 26 layers for Swin-B,
# patch_embed id 0, block j of stage s id sum(depths[:s]) + j + 1, downsample of stage s id
# sum(depths[:s + 1]), everything else (norm3, head) id 25; lr scale 0.9 ** (25 - id)
# (tests/test_transfer.py checks every parameter). One difference from SimMIM: its timm scheduler
# warms up from, and anneals to, absolute lrs (2.5e-7 * batch / 512) in every layer; here warm-up
# start and final lr are the same fractions (2e-4) of each layer's own peak lr.
_base_ = [
    'mmpretrain::_base_/models/swin_transformer/base_224.py',
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['greenmim_mm'], allow_failed_imports=False)

# The converted pre-training checkpoint (placeholder: point it at yours, e.g. with
# `--cfg-options model.backbone.init_cfg.checkpoint=PATH`):
#   python tools/convert_checkpoint.py --src greenmim_mm \
#       work_dirs/greenmim_swin-base-w7_8xb256-amp-800e_in1k-224px/epoch_800.pth \
#       work_dirs/greenmim_swin-base-w7_8xb256-amp-800e_in1k-224px/backbone_converted.pth
# (--src official-g1 for the released GreenMIM checkpoints, official-g3 / timm for others).
# The file holds {'state_dict': {'backbone.<key>': ...}}; `prefix='backbone.'` strips the prefix.
pretrained = 'work_dirs/greenmim_swin-base-w7_8xb256-amp-800e_in1k-224px/backbone_converted.pth'
base_lr = 1.25e-3  # per 512 images
warmup_epochs = 20
max_epochs = 100

model = dict(
    backbone=dict(
        type='greenmim_mm.GreenSwinTransformer',  # dense path = mmpretrain's SwinTransformer
        arch='base',
        img_size=224,
        window_size=7,
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')))
# Inherited from base_224.py: GlobalAveragePooling, LinearClsHead(1000, LabelSmoothLoss 0.1),
# train_cfg.augments = [Mixup(alpha=0.8), CutMix(alpha=1.0)], TruncNormal(0.02) Linear init.

data_root = 'data/imagenet/'
train_dataloader = dict(
    batch_size=128,  # per GPU
    num_workers=8,
    persistent_workers=True,
    dataset=dict(data_root=data_root, split='', ann_file='meta/train.txt', data_prefix='train'))
val_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    dataset=dict(data_root=data_root, split='', ann_file='meta/val.txt', data_prefix='val'))
test_dataloader = val_dataloader
# Inherited from imagenet_bs64_swin_224.py: RandomResizedCrop 224 (bicubic), flip,
# RandAugment(timm_increasing, 2 ops, magnitude 9 of 10, std 0.5), RandomErasing(0.25, 'rand'),
# test ResizeEdge 256 + CenterCrop 224, Accuracy top-1/5.

optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=base_lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05),
    clip_grad=dict(max_norm=5.0),
    constructor='LearningRateDecayOptimWrapperConstructor',
    paramwise_cfg=dict(
        layer_decay_rate=0.9,
        custom_keys={
            '.norm': dict(decay_mult=0.0),
            '.bias': dict(decay_mult=0.0),
            '.absolute_pos_embed': dict(decay_mult=0.0),
            '.relative_position_bias_table': dict(decay_mult=0.0)
        }))
# lr = base_lr * (GPUs x batch) / 512, as SimMIM.
auto_scale_lr = dict(base_batch_size=512, enable=True)

param_scheduler = [
    dict(type='LinearLR', start_factor=2.5e-7 / 1.25e-3, by_epoch=True, begin=0,
         end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs,
         eta_min_ratio=2.5e-7 / 1.25e-3, by_epoch=True, begin=warmup_epochs, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(
    checkpoint=dict(type='greenmim_mm.SafeCheckpointHook', interval=1, max_keep_ckpts=3),
    logger=dict(type='LoggerHook', interval=100))
randomness = dict(seed=0)
# Stop at the first NaN/inf loss, before any checkpoint of it (greenmim_mm.engine).
custom_hooks = [dict(type='greenmim_mm.NonFiniteLossHook')]

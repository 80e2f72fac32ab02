# ImageNet-1k fine-tuning of a LocalMIM-pre-trained ViT-B/16 (224 px) with the official LocalMIM
# hyper-parameters for ViT-B after 1600 pre-training epochs (LocalMIM's ViT/run_finetune.py and
# README): 100 epochs (20 warm-up, then cosine to min lr 1e-5), batch 1024 (8 GPUs x 128), AdamW
# lr 2e-3 betas (0.9, 0.999) wd 0.05, layer-wise lr decay 0.65, drop path 0.1, global average
# pooling + LayerNorm (MAE's fc_norm; no final norm), head init std 2e-5, label smoothing 0.1,
# Mixup 0.8 / CutMix 1.0, RandAugment rand-m9-mstd0.5-inc1, RandomErasing 0.25; fp16 AMP.
# (LocalMIM uses lr 4e-3, layer decay 0.75, min lr 1e-6 after 100 pre-training epochs.)
#
# Built on mmpretrain's MAE ViT-B fine-tuning config (same model, pipeline and layer decay
# constructor); only the schedule differs (MAE: 5 warm-up epochs, min lr 1e-6).
#
# Weights (placeholder below; or --cfg-options model.backbone.init_cfg.checkpoint=PATH):
#   our pre-training (configs/pretrain/localmim_vit-base-p16_8xb256-amp-1600e_in1k-224px_hog.py):
#     python tools/convert_checkpoint.py --src localmim EPOCH.pth backbone_converted.pth
#   the released official checkpoint (vit_base_localmim_hog_1600ep_pretrain.pth):
#     python tools/convert_checkpoint.py --src localmim-official-vit IN.pth backbone_converted.pth
_base_ = 'mmpretrain::mae/benchmarks/vit-base-p16_8xb128-coslr-100e_in1k.py'
custom_imports = dict(imports=['greenmim_mm'], allow_failed_imports=False)

pretrained = ('work_dirs/localmim_vit-base-p16_8xb256-amp-1600e_in1k-224px_hog/'
              'backbone_converted.pth')
warmup_epochs = 20
max_epochs = 100

model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=pretrained,
                                         prefix='backbone.')))

data_root = 'data/imagenet/'
train_dataloader = dict(
    batch_size=128,  # per GPU
    num_workers=8,
    persistent_workers=True,
    dataset=dict(data_root=data_root, split='', ann_file='meta/train.txt', data_prefix='train'))
val_dataloader = dict(
    batch_size=128,
    num_workers=8,
    persistent_workers=True,
    dataset=dict(data_root=data_root, split='', ann_file='meta/val.txt', data_prefix='val'))
test_dataloader = val_dataloader

optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic')
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, by_epoch=True,
         begin=warmup_epochs, end=max_epochs, eta_min=1e-5, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs)

default_hooks = dict(
    checkpoint=dict(type='greenmim_mm.SafeCheckpointHook', interval=1, max_keep_ckpts=3))
# Stop at the first NaN/inf loss, before any checkpoint of it (greenmim_mm.engine).
custom_hooks = [dict(type='greenmim_mm.NonFiniteLossHook')]

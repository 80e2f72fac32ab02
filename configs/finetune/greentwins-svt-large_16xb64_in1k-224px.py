# ImageNet-1k fine-tuning of a GreenMIM-pre-trained Twins-SVT-L (224 px) with mmpretrain's own
# Twins recipe (mmpretrain::twins/twins-svt-large_16xb64_in1k.py: 300 epochs, AdamW lr
# 5e-4 * 1024 / 512, wd 0.05 (none on norms and biases), betas (0.9, 0.999), gradient clipping 5.0,
# 5 warm-up epochs then cosine to 1e-5, label smoothing 0.1, Mixup 0.8 / CutMix 1.0, drop path
# 0.3, 16 GPUs x 64), the backbone replaced by our GreenTwinsSVT (dense path = mmpretrain's SVT,
# same state dict, with the LSA padding-mask fix; README, Twins section).
# Run under mmpretrain's scope: `mim train mmpretrain <this file>` or tools/train.py.
_base_ = ['mmpretrain::twins/twins-svt-large_16xb64_in1k.py']
custom_imports = dict(imports=['greenmim_mm'], allow_failed_imports=False)

# The converted pre-training checkpoint (placeholder: point it at yours, e.g. with
# `--cfg-options model.backbone.init_cfg.checkpoint=PATH`):
#   python tools/convert_checkpoint.py --src greenmim_mm \
#       work_dirs/greenmim_twins-svt-large_8xb256-amp-800e_in1k-224px/epoch_800.pth \
#       work_dirs/greenmim_twins-svt-large_8xb256-amp-800e_in1k-224px/backbone_converted.pth
# (--src official-twins for the official GreenMIM Twins-L checkpoints, timm-twins for timm's).
pretrained = ('work_dirs/greenmim_twins-svt-large_8xb256-amp-800e_in1k-224px/'
              'backbone_converted.pth')

model = dict(
    backbone=dict(
        type='greenmim_mm.GreenTwinsSVT',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')))
# Inherited: arch 'large', qkv_bias=True, norm_after_stage [F, F, F, T], drop_path_rate 0.3,
# GlobalAveragePooling, LinearClsHead(1000, 1024, LabelSmoothLoss 0.1), Mixup/CutMix.

data_root = 'data/imagenet/'
train_dataloader = dict(
    dataset=dict(data_root=data_root, split='', ann_file='meta/train.txt', data_prefix='train'))
val_dataloader = dict(
    dataset=dict(data_root=data_root, split='', ann_file='meta/val.txt', data_prefix='val'))
test_dataloader = val_dataloader

# Checkpoints in the plain, atomically written format (README, Checkpoint files).
default_hooks = dict(
    checkpoint=dict(type='greenmim_mm.SafeCheckpointHook', interval=1, max_keep_ckpts=3))

# Stop with a clear error on a non-finite loss, before any checkpoint of that iteration (README).
custom_hooks = [dict(type='greenmim_mm.NonFiniteLossHook')]

# ImageNet-1k fine-tuning of a GreenMIM-pre-trained Swin-L, window 14 (per-stage windows
# 14, 14, 14, 7: stage 4's map is 7x7 at 224 px), 224 px. GreenMIM's Swin-L values
# (GreenMIM's official code): base lr 1e-3 per 512 images (16 GPUs x 48 = 768 -> 1.5e-3, the
# batch of GreenMIM's README), layer decay 0.8, drop path 0.3, warm-up from / cosine to
# 2e-7 / 3.5e-7 per 1e-3 of peak lr; everything else as the Swin-B config it is built on
# (greenswin-base-w7_8xb128-amp-100e_in1k-224px.py). Layer ids: 26 layers (depths 2, 2, 18, 2),
# lr scale 0.8 ** (25 - id).
_base_ = ['./greenswin-base-w7_8xb128-amp-100e_in1k-224px.py']

# Placeholder: the converted Swin-L w14 pre-training, e.g.
#   python tools/convert_checkpoint.py --src greenmim_mm \
#       work_dirs/greenmim_swin-large-w14_8xb256-amp-800e_in1k-224px/epoch_800.pth \
#       work_dirs/greenmim_swin-large-w14_8xb256-amp-800e_in1k-224px/backbone_converted.pth
# (official GreenMIM Swin-L w14 weights: --src official-g1 --stage-windows 14,14,14,7).
pretrained = 'work_dirs/greenmim_swin-large-w14_8xb256-amp-800e_in1k-224px/backbone_converted.pth'
base_lr = 1e-3
warmup_epochs = 20
max_epochs = 100

model = dict(
    backbone=dict(
        arch='large',
        window_size=14,
        stage_cfgs=[dict(window_size=w) for w in (14, 14, 14, 7)],
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint=pretrained)),
    head=dict(in_channels=1536))

train_dataloader = dict(batch_size=48)
optim_wrapper = dict(optimizer=dict(lr=base_lr), paramwise_cfg=dict(layer_decay_rate=0.8))
param_scheduler = [
    dict(type='LinearLR', start_factor=2e-7 / 1e-3, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min_ratio=3.5e-7 / 1e-3,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]

# Mask R-CNN + FPN on COCO with a GreenMIM-pre-trained Twins-SVT-L, 1x schedule (12 epochs):
# mmdet 3.3's Swin Mask R-CNN recipe (mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py: AdamW
# lr 1e-4, betas (0.9, 0.999), wd 0.05 (none on norms), warm-up 1000 iterations, steps at epochs
# 8 and 11; 8 GPUs x 2 images) with our GreenTwinsSVT on its dense path (mmpretrain's SVT, same
# state dict, LSA padding keys excluded at any input size), reached from mmdet's scope through
# custom_imports + the `greenmim_mm.` prefix. All four stages feed the FPN, each normalised.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['greenmim_mm'], allow_failed_imports=False)

# Backbone weights converted from a pre-training checkpoint (placeholder: point it at yours):
#   python tools/convert_checkpoint.py --src greenmim_mm \
#       work_dirs/greenmim_twins-svt-large_8xb256-amp-800e_in1k-224px/epoch_800.pth \
#       work_dirs/greenmim_twins-svt-large_8xb256-amp-800e_in1k-224px/backbone_converted.pth
# norm_after_stage0-2 are not in it (pre-training normalises only stage 4) and start from
# LayerNorm's default init.
pretrained = ('work_dirs/greenmim_twins-svt-large_8xb256-amp-800e_in1k-224px/'
              'backbone_converted.pth')

model = dict(
    backbone=dict(
        _delete_=True,
        type='greenmim_mm.GreenTwinsSVT',
        arch='large',  # embed 128-256-512-1024, depths 2-2-18-2, heads 4-8-16-32, windows 7
        qkv_bias=True,
        norm_after_stage=True,
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[128, 256, 512, 1024]))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))

# Checkpoints in the plain, atomically written format (README, Checkpoint files).
default_hooks = dict(checkpoint=dict(type='greenmim_mm.SafeCheckpointHook'))

# Stop with a clear error on a non-finite loss, before any checkpoint of that iteration (README).
custom_hooks = [dict(type='greenmim_mm.NonFiniteLossHook')]

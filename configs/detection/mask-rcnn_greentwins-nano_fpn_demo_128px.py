# Demo: Mask R-CNN + FPN with the nano GreenTwinsSVT of the Twins demo pre-training
# (configs/pretrain/greenmim_twins-nano_demo_128px.py) on the generated COCO-style shapes:
# mask-rcnn_greenswin-nano_fpn_demo_128px.py (data, heads, schedule) with the Twins backbone,
# every stage normalised into the FPN, the demo's lr without Swin's layer-wise decay. The checkpoint path is a placeholder
# (`--cfg-options model.backbone.init_cfg.checkpoint=PATH`, or `model.backbone.init_cfg=None`).
_base_ = './mask-rcnn_greenswin-nano_fpn_demo_128px.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='greenmim_mm.GreenTwinsSVT',
        arch='nano',
        qkv_bias=True,
        norm_after_stage=True,
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='work_dirs/demo_twins/backbone_converted.pth',
                      prefix='backbone.')),
    neck=dict(in_channels=[32, 64, 128, 256]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=4e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.),
                                    'position_encodings': dict(decay_mult=0.)}))

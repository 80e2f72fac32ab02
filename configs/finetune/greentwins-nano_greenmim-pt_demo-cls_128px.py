# Demo: the nano GreenTwinsSVT (dense path) classifying the generated demo shapes at 128 px,
# initialised from the Twins demo pre-training (configs/pretrain/greenmim_twins-nano_demo_128px.py)
# converted to backbone weights:
#   python tools/convert_checkpoint.py --src greenmim_mm work_dirs/demo_twins/epoch_16.pth \
#       work_dirs/demo_twins/backbone_converted.pth
# Same data, schedule and recipe as greenswin-nano_demo-cls_128px.py, except: no layer-wise lr
# decay (mmpretrain's SVT defines no layer depths) and no weight decay on the PEG kernels
# (timm's Twins no_weight_decay). The checkpoint path is a placeholder
# (`--cfg-options model.backbone.init_cfg.checkpoint=PATH`).
_base_ = ['./greenswin-nano_demo-cls_128px.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='GreenTwinsSVT',
        arch='nano',
        qkv_bias=True,
        norm_after_stage=[False, False, False, True],
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='work_dirs/demo_twins/backbone_converted.pth',
                      prefix='backbone.')))

optim_wrapper = dict(
    _delete_=True,
    optimizer=dict(type='AdamW', lr=3e-4, betas=(0.9, 0.999), weight_decay=0.05),
    clip_grad=dict(max_norm=5.0),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={'position_encodings': dict(decay_mult=0.0)}))

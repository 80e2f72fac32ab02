# Demo: greenswin-nano_demo-cls_128px.py (same data, recipe and schedule) with the backbone
# initialised from the demo GreenMIM pre-training
# (configs/pretrain/greenmim_swin-nano_demo_128px.py, which `make demo` runs into
# work_dirs/demo), converted to backbone weights first:
#   python tools/convert_checkpoint.py --src greenmim_mm work_dirs/demo/epoch_16.pth \
#       work_dirs/demo/backbone_converted.pth
# The path below is a placeholder; point it elsewhere with
# `--cfg-options model.backbone.init_cfg.checkpoint=PATH`. The converted file holds
# {'state_dict': {'backbone.<key>': ...}}; `prefix='backbone.'` strips the prefix.
_base_ = ['./greenswin-nano_demo-cls_128px.py']

model = dict(
    backbone=dict(
        init_cfg=dict(type='Pretrained', checkpoint='work_dirs/demo/backbone_converted.pth',
                      prefix='backbone.')))

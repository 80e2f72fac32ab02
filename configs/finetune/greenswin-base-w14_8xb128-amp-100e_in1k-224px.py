# ImageNet-1k fine-tuning of a GreenMIM-pre-trained Swin-B with window 14 (224 px): the Swin-B w7
# recipe (GreenMIM's, see greenswin-base-w7_8xb128-amp-100e_in1k-224px.py) with the pre-training's
# per-stage windows 14/14/14/7 (the last stage's 7x7 map holds one 7x7 window, as in the official
# Swin, which clips a window to its map), as greenswin-large-w14_16xb48-amp-100e_in1k-224px.py.
# GreenMIM's release fine-tunes Swin-B at window 7 only; this config keeps the pre-training's
# windows so no relative position table is resized.
#
# Weights: our pre-training (configs/pretrain/greenmim_swin-base-w14_8xb256-amp-800e_in1k-224px.py)
#   python tools/convert_checkpoint.py --src greenmim_mm --stage-windows 14,14,14,7 \
#       work_dirs/greenmim_swin-base-w14_8xb256-amp-800e_in1k-224px/epoch_800.pth \
#       work_dirs/greenmim_swin-base-w14_8xb256-amp-800e_in1k-224px/backbone_converted.pth
# or the released official GreenMIM Swin-B w14 checkpoint: --src official-g1 (docs/checkpoints.md).
_base_ = ['./greenswin-base-w7_8xb128-amp-100e_in1k-224px.py']

pretrained = 'work_dirs/greenmim_swin-base-w14_8xb256-amp-800e_in1k-224px/backbone_converted.pth'

model = dict(
    backbone=dict(
        window_size=14,
        stage_cfgs=[dict(window_size=w) for w in (14, 14, 14, 7)],
        init_cfg=dict(checkpoint=pretrained)))

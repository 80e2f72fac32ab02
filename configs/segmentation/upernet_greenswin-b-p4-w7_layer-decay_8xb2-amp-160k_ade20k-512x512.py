# upernet_greenswin-b-p4-w7_8xb2-amp-160k_ade20k-512x512.py with layer-wise lr decay, as our
# detection option (configs/detection/mask-rcnn_greenswin-b-p4-w7_fpn_layer-decay_1x_coco.py); not
# part of the official LocalMIM Swin segmentation recipe, which has none.
# greenmim_mm.SwinLayerDecayOptimWrapperConstructor (greenmim_mm/engine/layer_decay.py) is reached
# from mmseg's scope by its `greenmim_mm.` prefix. Layer ids of Swin-B (depths 2-2-18-2):
# patch_embed 0; block j of stage s: sum(depths[:s]) + j + 1; downsample of stage s:
# sum(depths[:s + 1]); norm0-3, decode and auxiliary heads: 25; lr = 6e-5 * 0.9 ** (25 - id).
# Weight decay as in the base (none on norms, relative_position_bias_table, absolute_pos_embed).
_base_ = './upernet_greenswin-b-p4-w7_8xb2-amp-160k_ade20k-512x512.py'

optim_wrapper = dict(
    constructor='greenmim_mm.SwinLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9))

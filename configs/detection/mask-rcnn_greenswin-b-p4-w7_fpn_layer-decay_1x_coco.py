# The 1x Mask R-CNN of mask-rcnn_greenswin-b-p4-w7_fpn_1x_coco.py with layer-wise lr decay
# (an option, not part of mmdet's Swin recipe; common for MIM-pre-trained backbones).
# greenmim_mm.SwinLayerDecayOptimWrapperConstructor (greenmim_mm/engine/layer_decay.py) gives
# backbone parameters Swin's layer ids (patch_embed 0; block j of stage s: sum(depths[:s]) + j + 1;
# downsample of stage s: sum(depths[:s + 1]); norm0-3: 25 for Swin-B) and the neck and heads the
# top id 25; lr = 1e-4 * layer_decay_rate ** (25 - id). Weight decay as in the 1x config: none on
# norms, relative_position_bias_table and absolute_pos_embed (custom_keys: decay_mult only).
_base_ = './mask-rcnn_greenswin-b-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['greenmim_mm', 'greenmim_mm.engine'], allow_failed_imports=False)

optim_wrapper = dict(
    constructor='greenmim_mm.SwinLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9))

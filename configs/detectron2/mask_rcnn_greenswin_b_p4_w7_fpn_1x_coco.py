# LazyConfig twin of mask_rcnn_greenswin_b_p4_w7_fpn_1x_coco.yaml (Mask R-CNN + FPN, GreenMIM Swin-B
# window 7, COCO 1x, AdamW lr 1e-4 / wd 0.05 without decay on norms and position tables, optional
# layer-wise lr decay): detectron2's model-zoo LazyConfigs with greenmim_mm's backbone. For
# detectron2's tools/lazyconfig_train_net.py (the extra installs it as the top-level `tools`
# package: `python -m tools.lazyconfig_train_net --config-file THIS`), whose plain
# DetectionCheckpointer needs train.init_checkpoint in detectron2's layout:
#   tools/convert_checkpoint_detectron2.py backbone_converted.pth backbone_d2.pth
# (greenmim_mm.detectron2.GreenDetectionCheckpointer loads both layouts and checks every weight).
import torch
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from greenmim_mm.detectron2 import AlignedFPN, GreenSwinBackbone, param_groups

model = get_config('common/models/mask_rcnn_fpn.py').model
model.backbone = L(AlignedFPN)(
    bottom_up=L(GreenSwinBackbone)(
        arch='base',  # embed 128, depths (2, 2, 18, 2), heads (4, 8, 16, 32)
        window_size=7,
        drop_path_rate=0.3,
        pad_small_map=True,
        frozen_stages=-1,
        out_features=['res2', 'res3', 'res4', 'res5']),
    in_features='${.bottom_up.out_features}',
    out_channels=256,
    top_block=L(LastLevelMaxPool)())
model.pixel_mean = [123.675, 116.28, 103.53]  # RGB, as in the pre-training
model.pixel_std = [58.395, 57.12, 57.375]
model.input_format = 'RGB'

dataloader = get_config('common/data/coco.py').dataloader
dataloader.train.mapper.image_format = 'RGB'
dataloader.train.mapper.augmentations[0].short_edge_length = (800, )  # single scale, as mmdet 1x
dataloader.train.total_batch_size = 16
dataloader.evaluator.use_fast_impl = False  # the fast COCO evaluation is C++

optimizer = L(torch.optim.AdamW)(
    params=L(param_groups)(
        base_lr='${..lr}',
        weight_decay='${..weight_decay}',
        layer_decay_rate=1.0,  # e.g. 0.9 for layer-wise lr decay
        no_weight_decay_keys=('norm', 'relative_position_bias_table', 'absolute_pos_embed')),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.05)

lr_multiplier = get_config('common/coco_schedule.py').lr_multiplier_1x  # 90k its, steps 60k/80k

train = get_config('common/train.py').train
train.init_checkpoint = 'work_dirs/greenmim_swin-base-w7_8xb256-amp-800e_in1k-224px/backbone_d2.pth'
train.output_dir = 'work_dirs/mask_rcnn_greenswin_b_p4_w7_fpn_1x_coco_lazy'

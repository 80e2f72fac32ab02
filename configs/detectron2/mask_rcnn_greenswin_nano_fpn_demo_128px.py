# Demo: the LazyConfig twin of mask_rcnn_greenswin_nano_fpn_demo_128px.yaml (the nano Mask R-CNN +
# FPN on the generated COCO-style shapes, CPU, 600 iterations of 8 images, AdamW with layer-wise lr
# decay 0.9, cosine schedule, COCO bbox + segm evaluation at the end). Run it with detectron2's own
# LazyConfig trainer, which the extra installs as the top-level `tools` package:
#   tools/env.sh python tools/make_demo_data.py                    # data/demo/coco, once
#   GREENMIM_MM_EXTRAS=detectron2 tools/env.sh python -m tools.lazyconfig_train_net \
#       --config-file configs/detectron2/mask_rcnn_greenswin_nano_fpn_demo_128px.py \
#       [train.init_checkpoint=work_dirs/demo/backbone_d2.pth]   # detectron2-layout weights:
#   tools/env.sh python tools/convert_checkpoint_detectron2.py backbone_converted.pth backbone_d2.pth
# Overrides are `key=value` (e.g. dataloader.train.dataset.coco_root=... train.max_iter=100).
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

from greenmim_mm.detectron2 import demo_dataset_dicts

from .mask_rcnn_greenswin_b_p4_w7_fpn_1x_coco import dataloader, model, optimizer, train

channels = 64  # FPN / head width (256 in the full-size model)
max_iter = 600
coco_root = 'data/demo/coco'

model.backbone.bottom_up.update(
    arch='nano',  # embed 32, depths 2-2-2-2, heads 2-4-4-8: the demo pre-training's Swin
    img_size=128,
    window_size=4,  # maps 32/16/8/4 at 128 px, as in the pre-training
    drop_path_rate=0.1,
    pad_small_map=False,
    size_divisibility=128)  # 32 x window 4: any test image pads to whole windows
model.backbone.out_channels = channels
model.proposal_generator.head.in_channels = channels
model.proposal_generator.pre_nms_topk = (500, 500)
model.proposal_generator.post_nms_topk = (200, 100)
model.roi_heads.update(num_classes=5, batch_size_per_image=128)
model.roi_heads.box_head.update(input_shape=ShapeSpec(channels=channels, height=7, width=7),
                                fc_dims=[256, 256])
model.roi_heads.box_predictor.update(input_shape=ShapeSpec(channels=256),
                                     test_topk_per_image=20)
model.roi_heads.mask_head.update(input_shape=ShapeSpec(channels=channels, width=14, height=14),
                                 conv_dims=[channels] * 5)

dataloader.train.dataset = L(demo_dataset_dicts)(coco_root=coco_root, split='train')
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(128, ), max_size=128, sample_style='choice'),
    L(T.RandomFlip)(horizontal=True)]
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 0
dataloader.test.dataset = L(demo_dataset_dicts)(coco_root='${...train.dataset.coco_root}',
                                                split='val')
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=128,
                                                                max_size=128)]
dataloader.test.num_workers = 0
dataloader.evaluator.dataset_name = 'greenmim_demo_val'

optimizer.lr = 4e-4
optimizer.params.layer_decay_rate = 0.9

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=50 / max_iter,
    warmup_factor=0.01)

train.update(
    max_iter=max_iter,
    init_checkpoint='',  # random init; or detectron2-layout weights (see above)
    output_dir='work_dirs/detectron2_demo_lazy',
    device='cpu',
    eval_period=0,  # evaluated once, after the last iteration
    log_period=20,
    seed=0)
train.checkpointer.period = max_iter

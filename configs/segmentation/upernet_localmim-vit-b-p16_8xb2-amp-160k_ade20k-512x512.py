# UperNet + LocalMIM-pre-trained ViT-B/16 on ADE20K, 512x512 crops, 160k iterations, 8 GPUs x 2
# images, AMP (fp16, dynamic loss scale).
# Recipe: the official LocalMIM ViT-B segmentation config (LocalMIM's official code,
# semantic_segmentation/configs/upernet_vit_base_12_512_slide_160k_ade20k.py, mmseg 0.11, apex
# AMP): AdamW lr 4e-4, betas (0.9, 0.999), wd 0.05, layer-wise lr decay 0.65 over 12 blocks (BEiT's
# LayerDecayOptimizerConstructor), linear warm-up 1500 iterations from 1e-6 then poly (power 1,
# min 0), drop path 0.1, outputs of blocks [1, 3, 9, 11], UPerHead with 768 channels + auxiliary
# FCNHead (weight 0.4) on the third output, slide inference (512 crops, stride 341).
# Its backbone (BEiT's ViT with an absolute position embedding, per-block relative position bias
# tables initialised to zero, layer scale init 1) and its feature-pyramid adapters (BEiT's
# fpn1: 2 x ConvTranspose 2x2 with BN + GELU, fpn2: ConvTranspose, fpn3: identity; fpn4: 2x2
# *average* pool where BEiT max-pools) are mmseg 1.2.2 parts: the `MAE` backbone (subclassed as
# greenmim_mm.LocalMIMSegMAE only to load converted weights strictly) and the `Feature2Pyramid`
# neck (subclassed as greenmim_mm.LocalMIMFeature2Pyramid only to average-pool); the layer decay is
# mmseg's `LayerDecayOptimizerConstructor` (BEiT's rule: cls token, position and patch embedding
# id 0, block i id i + 1, neck and heads 13; lr scale 0.65 ** (13 - id); no weight decay on 1-D
# parameters and biases). Base: mmseg's MAE UperNet config, which has the same structure.
_base_ = 'mmseg::mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py'
custom_imports = dict(imports=['greenmim_mm', 'greenmim_mm.segmentation'],
                      allow_failed_imports=False)

# Backbone weights converted from the official LocalMIM ViT-B pre-training (placeholder):
#   python tools/convert_checkpoint.py --src localmim-official-vit \
#       checkpoints/localmim_vit-b_hog_1600e.pth work_dirs/localmim_vit-b/backbone_converted.pth
# pos_embed (224-px grid) is resized to the 512-px grid at load (bicubic).
pretrained = 'work_dirs/localmim_vit-b/backbone_converted.pth'

model = dict(
    pretrained=None,  # the base names an MAE file here; ours is the backbone's init_cfg
    backbone=dict(
        _delete_=True,
        type='greenmim_mm.LocalMIMSegMAE',
        img_size=(512, 512),
        patch_size=16,
        embed_dims=768,
        num_layers=12,
        num_heads=12,
        mlp_ratio=4,
        init_values=1.0,
        drop_path_rate=0.1,
        out_indices=[1, 3, 9, 11],
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(type='greenmim_mm.LocalMIMFeature2Pyramid', embed_dim=768, rescales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[768, 768, 768, 768], num_classes=150, channels=768),
    auxiliary_head=dict(in_channels=768, num_classes=150),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=4e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='LayerDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.65))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False)
]
train_dataloader = dict(batch_size=2)  # x 8 GPUs = 16 images per iteration

default_hooks = dict(checkpoint=dict(type='greenmim_mm.SafeCheckpointHook'))
custom_hooks = [dict(type='greenmim_mm.NonFiniteLossHook')]

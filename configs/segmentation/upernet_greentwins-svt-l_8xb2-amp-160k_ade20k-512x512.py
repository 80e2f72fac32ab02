# UperNet + GreenMIM-pre-trained Twins-SVT-L on ADE20K, 512x512 crops, 160k iterations, 8 GPUs x 2
# images, AMP (fp16, dynamic loss scale). No official LocalMIM/GreenMIM Twins segmentation recipe
# exists; this is mmseg 1.2.2's Twins SVT-L UperNet config
# (mmseg::twins/twins_svt-l_uperhead_8xb2-160k_ade20k-512x512.py: AdamW lr 6e-5, betas
# (0.9, 0.999), wd 0.01, none on norms and the PEG `pos_block`; warm-up 1500 iterations then poly;
# drop path 0.3; UPerHead + auxiliary FCNHead on stage 3; whole-image inference) with our
# GreenTwinsSVT on its dense path (mmpretrain's SVT, same state dict) as the backbone.
# Twins has no layer ids (no get_layer_depth), so no layer-wise lr decay, as in mmseg's recipe.
_base_ = 'mmseg::twins/twins_svt-l_uperhead_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['greenmim_mm', 'greenmim_mm.segmentation'],
                      allow_failed_imports=False)

# Backbone weights converted from a pre-training checkpoint (placeholder: point it at yours):
#   python tools/convert_checkpoint.py --src greenmim_mm \
#       work_dirs/greenmim_twins-svt-large_8xb256-amp-800e_in1k-224px/epoch_800.pth \
#       work_dirs/greenmim_twins-svt-large_8xb256-amp-800e_in1k-224px/backbone_converted.pth
# (--src official-twins for the official GreenMIM Twins-L weights). norm_after_stage0-2 are not in
# it (pre-training normalises only stage 4) and start from LayerNorm's default init.
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
    decode_head=dict(in_channels=[128, 256, 512, 1024], num_classes=150),
    auxiliary_head=dict(in_channels=512, num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'pos_block': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)
    }))
train_dataloader = dict(batch_size=2)  # x 8 GPUs = 16 images per iteration

default_hooks = dict(checkpoint=dict(type='greenmim_mm.SafeCheckpointHook'))
custom_hooks = [dict(type='greenmim_mm.NonFiniteLossHook')]

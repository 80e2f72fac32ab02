# GreenMIM, Twins-SVT-L (the paper's Twins-L: embed 128-256-512-1024, depths 2-2-18-2, heads
# 4-8-16-32, LSA windows 7, GSA sr 8-4-2-1), 224 px, 8 GPUs x 256, 800 epochs: the same recipe as
# Swin-B (_base_/greenmim_pretrain_in1k-224px_800e.py). The sparse encoder runs LSA as grouped
# window attention, GSA on keys of whole visible 32-px units and the PEG as a submanifold
# depthwise convolution (README, Twins section). qkv biases and the norm after the last stage
# as in mmpretrain's Twins-SVT ImageNet configs (the decoder reads the normalised stage-4 tokens).
_base_ = ['./_base_/greenmim_pretrain_in1k-224px_800e.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='GreenTwinsSVT',
        arch='large',
        qkv_bias=True,
        norm_after_stage=[False, False, False, True],
        drop_path_rate=0.0,
        # the official GreenMIM Twins-L builds its blocks' and stage norms with eps 1e-6
        # (mmpretrain's SVT keeps its patch-embedding LayerNorms at 1e-5, as timm's Twins)
        norm_cfg=dict(type='LN', eps=1e-6),
        out_indices=(3, )),
    neck=dict(in_channels=1024))

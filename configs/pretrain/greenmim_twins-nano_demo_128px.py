# GreenMIM pre-training of a nano GreenTwinsSVT (arch 'nano': 32-64-128-256, depths 2-2-2-2,
# LSA window 4, sr 8-4-2-1) on the generated demo shapes (128 px, no labels): the Swin demo
# (greenmim_swin-nano_demo_128px.py: data, decoder, loss, schedule) with the Twins backbone.
# Sized for a CPU (README, Twins section). `python tools/make_demo_data.py` makes the data.
_base_ = ['./greenmim_swin-nano_demo_128px.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='GreenTwinsSVT',
        arch='nano',
        qkv_bias=True,
        norm_after_stage=[False, False, False, True],
        drop_path_rate=0.0,
        # the official GreenMIM Twins-L builds its blocks' and stage norms with eps 1e-6
        # (mmpretrain's SVT keeps its patch-embedding LayerNorms at 1e-5, as timm's Twins)
        norm_cfg=dict(type='LN', eps=1e-6),
        out_indices=(3, )),
    neck=dict(in_channels=256))

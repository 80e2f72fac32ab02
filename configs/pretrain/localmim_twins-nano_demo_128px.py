# LocalMIM pre-training of the nano GreenTwinsSVT (arch 'nano': 32-64-128-256, depths 2-2-2-2,
# LSA window 4, sr 8-4-2-1) on the generated demo shapes (128 px, no labels): the LocalMIM Swin
# demo (localmim_swin-nano_demo_128px.py: data, decoders, HOG targets, schedule) with the Twins
# backbone. Supervised features (out_after_downsample=True): the patch-embedding outputs of stages
# 1-3 (strides 8/16/32, the Twins analogue of Swin's "after patch merging") and the last stage's
# output (stride 32): grids 16/8/4/4 at 128 px, widths 64/128/256/256 as the Swin demo's.
# `python tools/make_demo_data.py` makes the data.
_base_ = ['./localmim_swin-nano_demo_128px.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='GreenTwinsSVT',
        arch='nano',
        qkv_bias=True,
        norm_after_stage=[False, False, False, True],
        drop_path_rate=0.0,
        out_indices=(0, 1, 2, 3),
        out_after_downsample=True,
        norm_cfg=dict(type='LN', eps=1e-6)))

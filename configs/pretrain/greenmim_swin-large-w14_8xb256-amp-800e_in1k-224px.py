# GreenMIM, Swin-L window 14 (stage 4 uses 7: its map is 7x7 at 224 px), 8 GPUs x 256, 800
# epochs, blr 1e-4 (official win14 Swin-L script).
_base_ = ['./_base_/greenmim_pretrain_in1k-224px_800e.py']

# The list replaces the base's stage_cfgs, so it repeats the LayerNorm eps 1e-6 of blocks and
# patch merging.
model = dict(
    backbone=dict(
        arch='large',
        window_size=14,
        stage_cfgs=[
            dict(window_size=w, block_cfgs=dict(norm_cfg=dict(type='LN', eps=1e-6)),
                 downsample_cfg=dict(norm_cfg=dict(type='LN', eps=1e-6)))
            for w in (14, 14, 14, 7)
        ]),
    neck=dict(in_channels=1536))

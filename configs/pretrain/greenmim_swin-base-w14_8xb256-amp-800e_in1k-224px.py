# GreenMIM, Swin-B window 14 (stage 4 uses 7: its map is 7x7 at 224 px), 8 GPUs x 256, 800
# epochs. The official win14 script uses blr 1.5e-4 (lr 1.2e-3 at 2048 images).
_base_ = ['./_base_/greenmim_pretrain_in1k-224px_800e.py']

# The list replaces the base's stage_cfgs, so it repeats the LayerNorm eps 1e-6 of blocks and
# patch merging.
model = dict(
    backbone=dict(
        window_size=14,
        stage_cfgs=[
            dict(window_size=w, block_cfgs=dict(norm_cfg=dict(type='LN', eps=1e-6)),
                 downsample_cfg=dict(norm_cfg=dict(type='LN', eps=1e-6)))
            for w in (14, 14, 14, 7)
        ]))
optim_wrapper = dict(optimizer=dict(lr=1.5e-4))

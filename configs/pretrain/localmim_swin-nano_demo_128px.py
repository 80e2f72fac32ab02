# LocalMIM pre-training of the nano GreenSwinTransformer on the generated demo shapes (128 px, no
# labels), sized for this CPU (README: LocalMIM demo). Data and optimiser are those of
# greenmim_swin-nano_demo_128px.py, the schedule is shorter (6 epochs); the backbone is the same
# nano Swin with outputs after patch merging (strides 8/16/32/32: grids 16/8/4/4 at 128 px), one
# tiny decoder per output and HOG targets (nbins 9) per cell = stride.
# `python tools/make_demo_data.py` makes the data.
_base_ = ['./greenmim_swin-nano_demo_128px.py']

strides = [8, 16, 32, 32]
encoder_widths = [64, 128, 256, 256]  # nano Swin (C = 32): 2C, 4C, 8C, 8C
decoder_widths = [32, 64, 64, 64]
hog_nbins = 9

model = dict(
    _delete_=True,
    type='LocalMIM',
    mask_ratio=0.75,
    backbone=dict(
        type='GreenSwinTransformer',
        arch=dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[2, 4, 4, 8]),
        img_size=128,
        window_size=4,
        drop_path_rate=0.0,
        out_indices=(0, 1, 2, 3),
        out_after_downsample=True,
        # every encoder LayerNorm with eps 1e-6, as the official LocalMIM Swin builders
        norm_cfg=dict(type='LN', eps=1e-6),
        patch_cfg=dict(norm_cfg=dict(type='LN', eps=1e-6)),
        stage_cfgs=dict(block_cfgs=dict(norm_cfg=dict(type='LN', eps=1e-6)),
                        downsample_cfg=dict(norm_cfg=dict(type='LN', eps=1e-6)))),
    necks=[
        dict(type='MAEGridDecoder', in_channels=c, embed_dims=d, depth=1, num_heads=4,
             mlp_ratio=4, pred_dims=3 * hog_nbins)
        for c, d in zip(encoder_widths, decoder_widths)
    ],
    heads=[
        dict(type='CellReconstructionHead', loss='mse',
             target_generator=dict(type='LocalMIMHOGGenerator', cell=s, nbins=hog_nbins))
        for s in strides
    ],
    init_cfg=[
        dict(type='Xavier', layer='Linear', distribution='uniform'),
        dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0)
    ])

# Shorter than the GreenMIM demo: every step also runs four decoders and four HOG targets.
max_epochs = 6
warmup_epochs = 1
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=0.0, by_epoch=True,
         begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)

# LocalMIM pre-training recipe for Swin (LocalMIM's official code), Swin-B window 7,
# HOG targets: the GreenMIM data pipeline, mask (one 7x7 mask of 32-px units per GPU batch, ratio
# 0.75) and sparse encoder; heads on the stage outputs after patch merging (stages 0-2) and the
# last stage (strides 8/16/32/32: grids 28/14/7/7 at 224 px), each through its own LayerNorm (the
# backbone's norm0..3, eps 1e-6) and a tiny decoder (widths 64/128/128/128, one block, 4 heads,
# MLP ratio 4, fixed sin-cos positions on its grid); targets HOG (nbins 18, frozen random gradient
# bias) per cell = stride; loss = plain sum of the four masked-cell MSEs.
# Optimiser: AdamW betas (0.9, 0.95), wd 0.05 (none on norms, biases, relative position bias
# tables, mask tokens); lr = blr * total_batch / 256 (auto_scale_lr), blr 1e-4; per-iteration
# linear warm-up then cosine to 0; fp16 AMP, no clipping. 400 epochs (40 warm-up); the 100-epoch
# variants use 10 warm-up epochs.
_base_ = ['./greenmim_pretrain_in1k-224px_800e.py']

max_epochs = 400
warmup_epochs = 40
strides = [8, 16, 32, 32]
encoder_widths = [256, 512, 1024, 1024]  # Swin-B: 2C, 4C, 8C, 8C
decoder_widths = [64, 128, 128, 128]
hog_nbins = 18

model = dict(
    _delete_=True,
    type='LocalMIM',
    mask_ratio=0.75,
    backbone=dict(
        type='GreenSwinTransformer',
        arch='base',
        img_size=224,
        window_size=7,
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
             target_generator=dict(type='LocalMIMHOGGenerator', cell=s, nbins=hog_nbins,
                                   gradient_bias=True)) for s in strides
    ],
    init_cfg=[
        dict(type='Xavier', layer='Linear', distribution='uniform'),
        dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0)
    ])

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=0.0,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
# LocalMIM sets find_unused_parameters for Swin; every parameter here receives a gradient.

# LocalMIM, Swin-B window 7, normalised-pixel targets per cell (8/16/32/32 px: 192/768/3072/3072
# values, MAE norm-pix, eps 1e-6), 8 GPUs x 256, 100 epochs, blr 1e-4 (LocalMIM's official code).
_base_ = ['./localmim_swin-base-w7_8xb256-amp-100e_in1k-224px_hog.py']

strides = [8, 16, 32, 32]
encoder_widths = [256, 512, 1024, 1024]
decoder_widths = [64, 128, 128, 128]
model = dict(
    necks=[
        dict(type='MAEGridDecoder', in_channels=c, embed_dims=d, depth=1, num_heads=4,
             mlp_ratio=4, pred_dims=3 * s * s)
        for c, d, s in zip(encoder_widths, decoder_widths, strides)
    ],
    heads=[
        dict(type='CellReconstructionHead', loss='mse',
             target_generator=dict(type='PixelTargetGenerator', cell=s, norm_pix=True))
        for s in strides
    ])

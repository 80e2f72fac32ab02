# LocalMIM, Swin-L window 14 (stage 4 uses 7: its map is 7x7 at 224 px), HOG targets (nbins 18 +
# frozen gradient bias), 8 GPUs x 128 x 4 accumulation steps = 4096 images per update,
# 800 epochs (40 warm-up), blr 1e-4 -> lr 1.6e-3 (LocalMIM's official code).
_base_ = ['./_base_/localmim_swin_pretrain_in1k-224px.py']

max_epochs = 800
warmup_epochs = 40
batch_size = 128
accumulation = 4
encoder_widths = [384, 768, 1536, 1536]  # Swin-L: 2C, 4C, 8C, 8C
decoder_widths = [64, 128, 128, 128]

model = dict(
    backbone=dict(arch='large', window_size=14,
                  # the list replaces the base's stage_cfgs: repeat its LayerNorm eps 1e-6
                  stage_cfgs=[dict(window_size=w,
                                   block_cfgs=dict(norm_cfg=dict(type='LN', eps=1e-6)),
                                   downsample_cfg=dict(norm_cfg=dict(type='LN', eps=1e-6)))
                              for w in (14, 14, 14, 7)]),
    necks=[
        dict(type='MAEGridDecoder', in_channels=c, embed_dims=d, depth=1, num_heads=4,
             mlp_ratio=4, pred_dims=3 * 18) for c, d in zip(encoder_widths, decoder_widths)
    ])
train_dataloader = dict(batch_size=batch_size)
# auto_scale_lr (tools/train.py's GreenRunner) counts GPUs x batch_size x accumulation steps:
# 8 x 128 x 4 = 4096 images per update -> lr = blr 1e-4 x 4096 / 256 = 1.6e-3 (on 16 GPUs use
# --cfg-options accumulation=2 for the same 4096 and lr).
optim_wrapper = dict(accumulative_counts=accumulation, optimizer=dict(lr=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=0.0,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)

# LocalMIM, ViT-B/16 (LocalMIM's official code): mmpretrain's MAEViT on the visible
# patches (per-sample masking, ratio 0.75), heads after blocks 1, 3, 9, 11, each with its own
# LayerNorm (eps 1e-6) and decoder (256 wide, 1 block, 8 heads), predicting HOG (nbins 9, no
# gradient bias) on grids 4/2/1/0.5 x the 14x14 patch grid (cells of 4/8/16/32 px; the 32-px cells
# weighted by their share of masked patches); loss = plain sum. 8 GPUs x 256 = 2048 images,
# blr 2e-4 -> lr 1.6e-3, 1600 epochs (40 warm-up), cosine to min lr 1e-6, AdamW betas
# (0.9, 0.95), wd 0.05 (none on norms, biases, position/cls/mask tokens), fp16 AMP.
_base_ = ['./_base_/greenmim_pretrain_in1k-224px_800e.py']

max_epochs = 1600
warmup_epochs = 40
scales = [4.0, 2.0, 1.0, 0.5]
cells = [4, 8, 16, 32]
hog_nbins = 9

model = dict(
    _delete_=True,
    type='LocalMIMViT',
    mask_ratio=0.75,
    backbone=dict(
        type='LocalMIMMAEViT',
        arch='b',
        img_size=224,
        patch_size=16,
        out_indices=[1, 3, 9, 11],
        final_norm=False,  # every head has its own norm; fine-tuning uses fc_norm (MAE)
        drop_path_rate=0.0),
    necks=[
        dict(type='LocalMIMViTDecoder', in_channels=768, pred_dims=3 * hog_nbins, scale=s,
             embed_dims=256, depth=1, num_heads=8, mlp_ratio=4) for s in scales
    ],
    heads=[
        dict(type='CellReconstructionHead', loss='mse',
             target_generator=dict(type='LocalMIMHOGGenerator', cell=c, nbins=hog_nbins))
        for c in cells
    ],
    init_cfg=[
        dict(type='Xavier', layer='Linear', distribution='uniform'),
        dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0)
    ])

optim_wrapper = dict(
    optimizer=dict(lr=2e-4),
    paramwise_cfg=dict(
        custom_keys=dict(
            pos_embed=dict(decay_mult=0.0),
            cls_token=dict(decay_mult=0.0),
            mask_token=dict(decay_mult=0.0))))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=1e-6,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)

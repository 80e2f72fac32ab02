# LocalMIM, Swin-B window 7, HOG targets, 8 GPUs x 256, 100 epochs (10 warm-up), blr 1e-4
# (LocalMIM's official code: 100-epoch runs warm up for 10 epochs).
_base_ = ['./_base_/localmim_swin_pretrain_in1k-224px.py']

max_epochs = 100
warmup_epochs = 10
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=0.0,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)

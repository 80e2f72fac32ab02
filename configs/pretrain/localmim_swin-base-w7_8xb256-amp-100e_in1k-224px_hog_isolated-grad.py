# LocalMIM, Swin-B window 7, HOG targets, 8 GPUs x 256, 100 epochs, with isolated gradients
# (the paper's "w/ isolated grad" ablation: Swin-B 83.7 vs 83.8 top-1): the encoder's tokens are
# detached after every supervised stage, so head k's loss trains only stage k, its norm and its
# decoder (LocalMIM(isolate_grad=True)). Everything else is the 100-epoch HOG recipe.
_base_ = ['./localmim_swin-base-w7_8xb256-amp-100e_in1k-224px_hog.py']

model = dict(isolate_grad=True)

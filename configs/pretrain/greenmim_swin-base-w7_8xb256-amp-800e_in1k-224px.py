# GreenMIM, Swin-B window 7, 224 px, 8 GPUs x 256, 800 epochs (official G1 recipe, blr 1e-4).
_base_ = ['./_base_/greenmim_pretrain_in1k-224px_800e.py']

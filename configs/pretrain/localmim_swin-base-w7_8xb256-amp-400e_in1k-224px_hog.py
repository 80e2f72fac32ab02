# LocalMIM, Swin-B window 7, HOG targets (nbins 18 + frozen gradient bias), 8 GPUs x 256,
# 400 epochs (40 warm-up), blr 1e-4 -> lr 8e-4 (LocalMIM's official code; model zoo: 84.1 top-1).
_base_ = ['./_base_/localmim_swin_pretrain_in1k-224px.py']

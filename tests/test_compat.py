"""Compatibility patches (greenmim_mm.compat) and the compiled mmcv ops on current torch."""
import pickle

import numpy as np
import pytest
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader

import greenmim_mm  # noqa: F401  (applies the patches)
from greenmim_mm.compat import Interp2dCubic


# ---------------------------------------------------------------------------- weights_only resume
class ToyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs, labels, mode='tensor'):
        out = self.linear(inputs)
        if mode == 'loss':
            return dict(loss=((out.squeeze(-1) - labels)**2).mean())
        return out


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 2, generator=gen)
        self.y = self.x @ torch.tensor([1.5, -2.0]) + 0.3

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], labels=self.y[i])


def make_runner(work_dir, max_epochs, resume):
    return Runner(
        model=ToyModel(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=ToyDataset(), sampler=dict(type='DefaultSampler', shuffle=True),
                              batch_size=4, num_workers=0, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05)),
        param_scheduler=dict(type='MultiStepLR', milestones=[1]),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        resume=resume, randomness=dict(seed=0), experiment_name=f'toy_{max_epochs}_{resume}',
        default_scope='mmengine')


def test_training_checkpoint_resumes_with_weights_only(tmp_path):
    make_runner(tmp_path, 1, False).train()
    ckpt = tmp_path / 'epoch_1.pth'
    # mmengine's own hook writes the old format, which torch's default loader rejects: the safe
    # loader (HistoryBuffer as an inert record, no getattr) is what makes resume work
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt, weights_only=True)
    saved = torch.load(ckpt, weights_only=False)  # only to read the reference values
    runner = make_runner(tmp_path, 2, True)
    runner.train()
    assert runner.epoch == 2
    # the resumed run started from the saved weights and message hub (not from scratch)
    hub = runner.message_hub.get_scalar('train/loss')
    assert len(hub.data[0]) == 8  # 4 iterations logged before the resume + 4 after
    np.testing.assert_allclose(hub.data[0][:4], saved['message_hub']['log_scalars']['train/loss'].data[0])


class Evil:
    def __reduce__(self):
        return (print, ('unpickled!',))


def test_third_party_checkpoints_stay_weights_only(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'payload': Evil()}, path)
    with pytest.raises(pickle.UnpicklingError,
                       match=rf'cannot read {path}: it pickles builtins.print, which is not '
                       'allowed'):
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    plain = tmp_path / 'plain.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}}, plain)
    assert CheckpointLoader.load_checkpoint(str(plain))['state_dict']['w'].item() == 1.0


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='can not be found'):
        CheckpointLoader.load_checkpoint(str(tmp_path / 'nope.pth'))


# ---------------------------------------------------------------------------- scipy interp2d
def test_interp2d_shim_is_an_exact_bicubic_spline():
    """A bicubic interpolating spline reproduces every polynomial of degree <= 3 in x and y."""
    x = np.array([-5.0, -3.2, -1.7, -0.6, 0.0, 0.6, 1.7, 3.2, 5.0])  # non-uniform, like mmpretrain's
    y = x.copy()

    def poly(xx, yy):
        return 0.3 * xx**3 - xx * yy**2 + 2 * yy**3 - 0.5 * xx**2 * yy + yy - 4

    z = poly(x[None, :], y[:, None])  # (len(y), len(x)), as interp2d expects
    f = Interp2dCubic(x, y, z, kind='cubic')
    xn, yn = np.linspace(-4.9, 4.9, 13), np.linspace(-4.5, 4.7, 7)
    out = f(xn, yn)
    assert out.shape == (7, 13)
    np.testing.assert_allclose(out, poly(xn[None, :], yn[:, None]), atol=1e-9)
    with pytest.raises(NotImplementedError, match='kind'):
        Interp2dCubic(x, y, z, kind='linear')


def test_mmpretrain_relative_position_table_resize_window_6_to_7():
    from mmpretrain.models import SwinTransformer
    arch = dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4])
    src = SwinTransformer(arch=arch, img_size=192, window_size=6)
    src.init_weights()
    dst = SwinTransformer(arch=arch, img_size=224, window_size=7)
    dst.load_state_dict(src.state_dict(), strict=False)  # index buffers differ in shape: rebuilt
    for (name, a), b in zip(src.named_parameters(), dst.parameters()):
        if 'relative_position_bias_table' not in name:
            continue
        assert a.shape == (11 * 11, a.shape[1]) and b.shape == (13 * 13, a.shape[1])
        # the resize keeps the zero offset (table centre) exactly, and stays within range
        src_centre, dst_centre = a.view(11, 11, -1)[5, 5], b.view(13, 13, -1)[6, 6]
        torch.testing.assert_close(dst_centre, src_centre, atol=1e-6, rtol=0)
        assert not torch.equal(b, torch.zeros_like(b))


# ---------------------------------------------------------------------------- compiled mmcv ops
def test_mmcv_roi_align_matches_torchvision():
    from mmcv.ops import RoIAlign
    from torchvision.ops import roi_align
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 8, 32, 40, generator=gen)
    xy = torch.rand(20, 2, generator=gen) * 30
    wh = torch.rand(20, 2, generator=gen) * 20 + 1
    rois = torch.cat([torch.randint(0, 2, (20, 1), generator=gen).float(), xy, xy + wh], 1)
    for ratio in (0, 2):
        ours = RoIAlign((7, 7), spatial_scale=0.5, sampling_ratio=ratio, aligned=True)(feats, rois)
        ref = roi_align(feats, rois, (7, 7), spatial_scale=0.5, sampling_ratio=ratio, aligned=True)
        assert ours.shape == (20, 8, 7, 7)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_mmcv_nms_matches_torchvision():
    from mmcv.ops import nms
    from torchvision.ops import nms as tv_nms
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(200, 2, generator=gen) * 100
    boxes = torch.cat([xy, xy + torch.rand(200, 2, generator=gen) * 40 + 1], 1)
    scores = torch.rand(200, generator=gen)
    for thr in (0.3, 0.5, 0.7):
        dets, keep = nms(boxes, scores, iou_threshold=thr)
        ref = tv_nms(boxes, scores, thr)
        assert 0 < len(ref) < 200
        assert torch.equal(keep, ref)
        torch.testing.assert_close(dets[:, 4], scores[ref])

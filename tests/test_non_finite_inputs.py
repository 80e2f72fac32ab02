"""Non-finite inputs give a non-finite loss, and so the run's NonFiniteLossError, for every
algorithm and target (issue 20 item 9). Before, LocalMIM's HOG target crashed with
``RuntimeError: index -9223372036854775808 is out of bounds`` (a NaN orientation cast to int64).

The fix adds no host synchronisation: the HOG bin of a NaN orientation becomes 0 on the device
and the NaN magnitude carries into the target and the loss, which the existing non-finite loss
check sees.

References: the HOG of the same image without the bad pixel (every cell its gradients do not
reach is unchanged); the training run's own error.
"""
import os.path as osp

import pytest
import torch
from mmengine.config import Config

import greenmim_mm  # noqa: F401
from greenmim_mm.engine import NonFiniteLossError
from greenmim_mm.models.target_generators import LocalMIMHOGGenerator
from greenmim_mm.registry import MODELS
from test_convert_checkpoint import one_thread  # noqa: F401 (autouse: one intra-op thread)
from test_localmim import tiny_localmim
from test_localmim_vit import tiny_vit_localmim

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PRETRAIN = osp.join(ROOT, 'configs', 'pretrain')


def from_config(name):
    def build():
        torch.manual_seed(0)
        model = MODELS.build(Config.fromfile(osp.join(PRETRAIN, name)).model)
        model.init_weights()
        return model, 128
    return build


ALGORITHMS = {
    'greenmim-swin-pixel': from_config('greenmim_swin-nano_demo_128px.py'),
    'greenmim-twins-pixel': from_config('greenmim_twins-nano_demo_128px.py'),
    'localmim-swin-hog': from_config('localmim_swin-nano_demo_128px.py'),
    'localmim-twins-hog': from_config('localmim_twins-nano_demo_128px.py'),
    'localmim-swin-pixel': lambda: (tiny_localmim(target='pixel'), 96),
    'localmim-vit-hog': lambda: (tiny_vit_localmim(), 64),
    'localmim-vit-pixel': lambda: (tiny_vit_localmim(target='pixel'), 64),
}


def bad_input(size, kind):
    x = torch.randn(2, 3, size, size)
    if kind == 'nan-pixel':
        x[1, 2, 37, 21] = float('nan')
    elif kind == 'inf-pixel':
        x[0, 0, 5, 50] = float('inf')
    else:  # a whole image NaN
        x[0] = float('nan')
    return x


@pytest.mark.parametrize('kind', ['nan-pixel', 'inf-pixel', 'nan-image'])
@pytest.mark.parametrize('name', sorted(ALGORITHMS))
def test_non_finite_input_gives_a_non_finite_loss(name, kind):
    model, size = ALGORITHMS[name]()
    with torch.no_grad():
        clean = model.loss(torch.randn(2, 3, size, size))
        losses = model.loss(bad_input(size, kind))
    assert torch.isfinite(sum(clean.values()))
    assert not torch.isfinite(sum(losses.values())), losses


def test_hog_of_a_nan_pixel_is_nan_only_in_the_cells_its_gradients_reach():
    """NaN at (12, 12) of a 32-px image: the Sobel gradients of pixels 11-13 x 11-13 are NaN,
    all inside cell (1, 1) of an 8-px grid: that cell's histogram is NaN, every other cell equals
    the clean image's."""
    hog = LocalMIMHOGGenerator(cell=8, nbins=9)
    x = torch.randn(2, 3, 32, 32)
    bad = x.clone()
    bad[1, 0, 12, 12] = float('nan')
    ref, out = hog(x), hog(bad)
    nan_cells = out.isnan().any(-1)
    assert nan_cells.nonzero().tolist() == [[1, 5]]  # sample 1, cell 1 * 4 + 1
    assert torch.equal(out[~nan_cells], ref[~nan_cells])
    assert out[1, 5, :9].isnan().all() and torch.equal(out[1, 5, 9:], ref[1, 5, 9:])


@pytest.fixture(scope='module')
def tiny_demo_data(demo_data_factory):
    return demo_data_factory('nonfinite', train_per_class=4, val_per_class=1)


@pytest.mark.parametrize('name', ['localmim_swin-nano_demo_128px.py',
                                  'localmim_twins-nano_demo_128px.py'])
def test_localmim_run_on_non_finite_inputs_stops_with_non_finite_loss_error(
        name, tiny_demo_data, tmp_path):
    """The report's case through a training run: std 0 in the data preprocessor makes every
    input pixel infinite; the run stops at iteration 1 with NonFiniteLossError, no checkpoint."""
    from greenmim_mm.apis import launch
    argv = [osp.join(PRETRAIN, name), '--work-dir', str(tmp_path), '--cfg-options',
            'train_cfg.max_epochs=1', 'train_dataloader.batch_size=4',
            f'train_dataloader.dataset.data_root={tiny_demo_data}',
            'default_hooks.checkpoint.by_epoch=False', 'default_hooks.checkpoint.interval=1',
            'data_preprocessor.std=[0,0,0]']
    with pytest.raises(NonFiniteLossError, match=r'iteration 1 \(epoch 1'):
        launch.main_train(argv)
    assert not list(tmp_path.glob('*.pth'))

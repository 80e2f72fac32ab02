"""Draw GreenMIM reconstructions.

``python tools/visualize_reconstruction.py CONFIG CHECKPOINT --out grid.png [--num 8]``
(entry point; the logic lives here).

Rows: original / masked input (masked 32-px units grey) / reconstruction (predicted masked units,
visible units pasted from the original). Images are the config's training images (evenly spaced
over the dataset), resized on the short edge and centre-cropped to the backbone's ``img_size``:
no random augmentation. One mask (from ``--seed``) is shared by all images, as in training.
With norm-pix targets the predictions are de-standardised with the original units' mean/std
(MAE's demo does the same). The grid is ``torchvision.utils.make_grid`` with white gutters.
"""
import contextlib
from typing import Iterator, List, Tuple

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import default_collate
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import _load_checkpoint
from PIL import Image
from torchvision.utils import make_grid

from greenmim_mm.apis.cli_args import add_picture_arguments as add_arguments  # noqa: F401
from greenmim_mm.apis.cli_args import parse_reconstruction_args as parse_args
from greenmim_mm.apis.cli_args import positive_int  # noqa: F401

class VisualizationInputError(ValueError):
    """A config, checkpoint or option the picture tools cannot use; the message names it."""


@contextlib.contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """The picture tools' known failures as ``SystemExit('<prog>: error: ...')`` (one line on
    stderr, exit status 1, no traceback): refused or unreadable checkpoints, weights that do not
    fit, missing files and folders (config, checkpoint, data, output folder), a config of
    another algorithm, a model config that cannot train. Anything else keeps its traceback."""
    from greenmim_mm.checkpoint.loading import CheckpointLoadError
    from greenmim_mm.models.algorithms.greenmim import ModelConfigError
    try:
        yield
    except (CheckpointLoadError, VisualizationInputError, ModelConfigError, FileNotFoundError,
            NotADirectoryError, IsADirectoryError, PermissionError) as err:
        raise SystemExit(f'{prog}: error: ' + ' '.join(str(err).split())) from None


GREY = 128
PAD = 2  # px of white gutter around every image
WHITE = 255


def build_model(cfg: Config, checkpoint: str, device: str) -> torch.nn.Module:
    """The config's model (top-level data_preprocessor merged as the Runner does) with every
    weight of the checkpoint (greenmim_mm's safe loader, through mmengine), in eval mode.

    Raises:
        VisualizationInputError: weights missing from the checkpoint, not in the model or of
            another shape (named, one line).
        CheckpointLoadError: the file is refused, unreadable or holds no state dict.
    """
    import greenmim_mm  # noqa: F401  (registers everything, applies the compat patches)
    from greenmim_mm.engine.checkpoint_hook import load_and_describe_misfit
    from greenmim_mm.registry import MODELS
    model_cfg = cfg.model.copy()
    if cfg.get('data_preprocessor') is not None:
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    model = MODELS.build(model_cfg)
    problems = load_and_describe_misfit(
        model, _load_checkpoint(checkpoint, map_location='cpu'), checkpoint)
    if problems:
        raise VisualizationInputError(
            f'{checkpoint} does not fit the config\'s model ({type(model).__name__}): '
            f'{problems}; pass the config the checkpoint was trained with')
    return model.to(device).eval()


def eval_pipeline(img_size: int) -> List[dict]:
    """Deterministic resize (short edge) + centre crop to ``img_size``."""
    return [
        dict(type='LoadImageFromFile'),
        dict(type='ResizeEdge', scale=img_size, edge='short', backend='pillow',
             interpolation='bicubic'),
        dict(type='CenterCrop', crop_size=img_size),
        dict(type='PackInputs'),
    ]


def load_batch(cfg: Config, num: int, img_size: int, data_root=None) -> dict:
    """``num`` images evenly spaced over the training set, collated: {'inputs': (N, 3, S, S)
    uint8 BGR, 'data_samples': [...]}."""
    from greenmim_mm.registry import DATASETS
    ds_cfg = cfg.train_dataloader.dataset.copy()
    ds_cfg.pipeline = eval_pipeline(img_size)
    if data_root is not None:
        ds_cfg.data_root = data_root
    dataset = DATASETS.build(ds_cfg)
    idx = np.linspace(0, len(dataset) - 1, min(num, len(dataset))).round().astype(int)
    return default_collate([dataset[int(i)] for i in idx])


def to_uint8(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
    """Normalised (N, 3, H, W) -> (N, H, W, 3) uint8 (the preprocessor's colour order, RGB);
    ``mean`` / ``std`` of shape (3,) or (3, 1, 1)."""
    x = x.float().cpu() * std.reshape(-1, 1, 1).cpu() + mean.reshape(-1, 1, 1).cpu()
    return x.clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()


def pixel_mask(mask: torch.Tensor, unit: int) -> np.ndarray:
    """(Hu, Wu) unit mask -> (Hu*unit, Wu*unit, 1) bool, True = masked."""
    m = mask.cpu().repeat_interleave(unit, 0).repeat_interleave(unit, 1)
    return m.numpy()[..., None]


def compose_grid(rows: List[np.ndarray]) -> Image.Image:
    """Rows of (N, H, W, 3) uint8 -> one RGB image, one row each, PAD-px white gutters."""
    n = rows[0].shape[0]
    images = torch.from_numpy(np.concatenate(rows)).permute(0, 3, 1, 2)  # (R*N, 3, H, W)
    grid = make_grid(images, nrow=n, padding=PAD, pad_value=WHITE)
    return Image.fromarray(grid.permute(1, 2, 0).numpy())


@torch.no_grad()
def visualize(cfg: Config, checkpoint: str, num: int = 8, data_root=None, seed: int = 0,
              device: str = 'cpu') -> Tuple[Image.Image, torch.Tensor]:
    """The (original / masked / reconstruction) grid and the mask used.

    Raises:
        ValueError: ``num`` < 1.
    """
    if num < 1:
        raise ValueError(f'num (images to draw) must be at least 1, got {num}')
    init_default_scope(cfg.get('default_scope', 'greenmim_mm'))
    model = build_model(cfg, checkpoint, device)
    img_size = int(cfg.model.backbone.get('img_size', 224))
    data = model.data_preprocessor(load_batch(cfg, num, img_size, data_root), False)
    inputs = data['inputs'][0] if isinstance(data['inputs'], list) else data['inputs']
    rec, mask = model.reconstruct(inputs, seed=seed)
    pre = model.data_preprocessor
    original = to_uint8(inputs, pre.mean, pre.std)
    recon = to_uint8(rec, pre.mean, pre.std)
    hidden = pixel_mask(mask, model.unit)
    masked = np.where(hidden, np.uint8(GREY), original)
    pasted = np.where(hidden, recon, original)
    return compose_grid([original, masked, pasted]), mask


def main(argv=None):
    from greenmim_mm.apis.launch import check_exists
    args = parse_args(argv)
    with one_line_errors('visualize_reconstruction'):
        check_exists(args.config, 'config file not found')
        check_exists(args.checkpoint, 'checkpoint not found')
        cfg = Config.fromfile(args.config)
        grid, mask = visualize(cfg, args.checkpoint, args.num, args.data_root, args.seed,
                               args.device)
        grid.save(args.out)
    print(f'{args.out}: {grid.size[0]}x{grid.size[1]} px, {int(mask.sum())}/{mask.numel()} '
          'units masked')


if __name__ == '__main__':
    main()

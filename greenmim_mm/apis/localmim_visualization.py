"""Pictures of every LocalMIM head's prediction next to its target (pixels, or HOG glyphs), and
the ``tools/visualize_localmim.py`` command:

``python tools/visualize_localmim.py CONFIG CHECKPOINT --out heads.png [--num 4]``

Columns: images (the config's training images, evenly spaced, resized and centre-cropped, as
tools/visualize_reconstruction.py). Rows: original, masked input (masked units grey), then per
head its prediction and its target (pixels, or HOG orientation glyphs). One mask from ``--seed``.

Pixel heads: predictions de-standardised with the original cells' mean/std when the target is
norm-pix (as MAE's demo), then shown as images. HOG heads: each cell's histogram drawn as
orientation glyphs by mmpretrain's ``HOGGenerator.generate_hog_image`` (line length and
brightness follow the bin value, averaged over the colour channels).
"""
from typing import List, Tuple

import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from PIL import Image

from greenmim_mm.apis.cli_args import parse_localmim_picture_args as parse_args
from greenmim_mm.models.target_generators import LocalMIMHOGGenerator, PixelTargetGenerator
from greenmim_mm.models.utils import denormalize_units, patchify, unpatchify
from greenmim_mm.apis.visualization import (GREY, VisualizationInputError, build_model,
                                            compose_grid, load_batch, one_line_errors, to_uint8)


def hog_glyphs(gen: LocalMIMHOGGenerator, cells: torch.Tensor, img_hw) -> np.ndarray:
    """(N, L, 3 * nbins) HOG cells -> (N, H, W, 3) uint8 glyph pictures."""
    h, w = img_hw[0] // gen.cell, img_hw[1] // gen.cell
    gen.h, gen.w = int(img_hw[0]), int(img_hw[1])  # generate_hog_image reads these
    out = []
    for sample in cells.float().cpu():
        hist = sample.view(h, w, 3, gen.nbins).permute(2, 3, 0, 1)[None]
        glyph = gen.generate_hog_image(hist.clamp(min=0))
        out.append(np.repeat(np.clip(glyph, 0, 255).astype(np.uint8)[..., None], 3, -1))
    return np.stack(out)


def pixel_picture(gen: PixelTargetGenerator, cells: torch.Tensor, imgs: torch.Tensor,
                  mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
    """(N, L, cell²·3) predictions or targets -> (N, H, W, 3) uint8 pictures."""
    cells = cells.float().cpu()
    imgs = imgs.float().cpu()
    if gen.norm_pix:
        cells = denormalize_units(cells, patchify(imgs, gen.cell), gen.eps)
    grid = (imgs.shape[-2] // gen.cell, imgs.shape[-1] // gen.cell)
    return to_uint8(unpatchify(cells, grid, gen.cell), mean, std)


def head_pictures(model, imgs: torch.Tensor, seed: int = 0
                  ) -> Tuple[List[Tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """A LocalMIM model (Swin or ViT) and normalised images (N, 3, H, W) ->
    ([(prediction, target) (N, H, W, 3) uint8 per head], masked pixels (N, H, W, 1) bool)."""
    preds, targets, mask = model.predict_heads(imgs, seed=seed)
    pre = model.data_preprocessor
    panels = []
    for head, pred, target in zip(model.head, preds, targets):
        gen = head.target_generator
        if isinstance(gen, LocalMIMHOGGenerator):
            panels.append((hog_glyphs(gen, pred, imgs.shape[-2:]),
                           hog_glyphs(gen, target, imgs.shape[-2:])))
        elif isinstance(gen, PixelTargetGenerator):
            panels.append((pixel_picture(gen, pred, imgs, pre.mean, pre.std),
                           pixel_picture(gen, target, imgs, pre.mean, pre.std)))
        else:
            raise ValueError(f'no picture for target generator {type(gen).__name__}')
    return panels, pixel_mask(mask, imgs.shape)


def pixel_mask(mask: torch.Tensor, img_shape) -> np.ndarray:
    """Unit mask (Hu, Wu) (shared) or per-sample patch masks (N, h, w) -> (N, H, W, 1) bool."""
    n, _, height, width = img_shape
    m = mask.cpu()
    if m.dim() == 2:
        m = m[None].expand(n, -1, -1)
    fy, fx = height // m.shape[-2], width // m.shape[-1]
    m = m.repeat_interleave(fy, 1).repeat_interleave(fx, 2)
    return m.numpy()[..., None]


@torch.no_grad()
def visualize(cfg: Config, checkpoint: str, num: int = 4, data_root=None, seed: int = 0,
              device: str = 'cpu') -> Image.Image:
    """The picture grid (a PIL image) of ``num`` training images for a LocalMIM checkpoint.

    Raises:
        VisualizationInputError: the config's model is not a LocalMIM model, or the checkpoint
            does not fit it.
    """
    init_default_scope(cfg.get('default_scope', 'greenmim_mm'))
    from greenmim_mm.registry import MODELS
    model_type = cfg.model.get('type')
    cls = model_type if isinstance(model_type, type) else MODELS.get(model_type)
    if not hasattr(cls or object, 'predict_heads'):
        raise VisualizationInputError(
            f'{cfg.filename}: model type {model_type} is not a LocalMIM model (no per-stage '
            'heads to draw); draw GreenMIM reconstructions with tools/visualize_reconstruction.py')
    model = build_model(cfg, checkpoint, device)
    img_size = int(cfg.model.backbone.get('img_size', 224))
    data = model.data_preprocessor(load_batch(cfg, num, img_size, data_root), False)
    imgs = data['inputs'][0] if isinstance(data['inputs'], list) else data['inputs']
    panels, hidden = head_pictures(model, imgs, seed=seed)
    original = to_uint8(imgs, model.data_preprocessor.mean, model.data_preprocessor.std)
    rows = [original, np.where(hidden, np.uint8(GREY), original)]
    rows += [picture for pair in panels for picture in pair]
    return compose_grid(rows)


def main(argv=None):
    args = parse_args(argv)
    with one_line_errors('visualize_localmim'):
        picture = visualize(Config.fromfile(args.config), args.checkpoint, args.num,
                            args.data_root, args.seed, args.device)
        picture.save(args.out)
    print(f'{args.out}: {picture.size[0]}x{picture.size[1]} px')

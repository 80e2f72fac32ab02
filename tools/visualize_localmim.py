"""Draw every LocalMIM head's prediction and target for a checkpoint.

``python tools/visualize_localmim.py CONFIG CHECKPOINT --out heads.png [--num 4]``

Columns: images (the config's training images, evenly spaced, resized and centre-cropped, as
tools/visualize_reconstruction.py). Rows: original, masked input (masked units grey), then per
head its prediction and its target (pixels, or HOG orientation glyphs). One mask from ``--seed``.
"""
import argparse

import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from PIL import Image

from greenmim_mm.visualization import GREY, add_arguments, build_model, compose_grid, load_batch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Visualise LocalMIM head predictions')
    return add_arguments(parser, 'LocalMIM', 'localmim_heads.png', 4).parse_args(argv)


@torch.no_grad()
def visualize(cfg: Config, checkpoint: str, num: int = 4, data_root=None, seed: int = 0,
              device: str = 'cpu') -> Image.Image:
    from greenmim_mm.localmim_visualization import head_pictures, to_uint8
    init_default_scope(cfg.get('default_scope', 'greenmim_mm'))
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
    picture = visualize(Config.fromfile(args.config), args.checkpoint, args.num, args.data_root,
                        args.seed, args.device)
    picture.save(args.out)
    print(f'{args.out}: {picture.size[0]}x{picture.size[1]} px')


if __name__ == '__main__':
    main()

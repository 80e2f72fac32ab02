"""``GreenSwinTransformer`` (dense path) as a detectron2 backbone, with and without FPN.

Registered in detectron2's ``BACKBONE_REGISTRY``:

* ``build_greenswin_backbone``: :class:`GreenSwinBackbone` from ``cfg.MODEL.GREENSWIN``.
* ``build_greenswin_fpn_backbone``: the same under detectron2's ``FPN`` (``cfg.MODEL.FPN``), as
  detectron2's ``build_resnet_fpn_backbone`` does for ResNet.
"""
from typing import Optional, Sequence

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from greenmim_mm.models import GreenSwinTransformer

from .backbone import FEATURE_NAMES, MMBackbone, fpn_from_config, plain_config, stage_indices


class GreenSwinBackbone(MMBackbone):
    """``GreenSwinTransformer``'s dense path (mmpretrain's Swin) as a detectron2 backbone.

    Outputs ``res2`` ... ``res5``: (B, C * 2**i, H / (4 * 2**i), W / (4 * 2**i)) after ``norm{i}``,
    bitwise the maps of ``GreenSwinTransformer(..., out_indices=...)``. Parameters live under
    ``body.`` in mmpretrain's Swin layout, so converted greenmim_mm checkpoints
    (``backbone.<key>``) load into ``...bottom_up.body.<key>`` (see
    :class:`greenmim_mm.detectron2.GreenDetectionCheckpointer`).

    Args:
        out_features (Sequence[str]): any of ``res2`` ... ``res5`` in order.
        size_divisibility (int, optional): what detectron2 pads images to; default the largest
            output stride (32 for ``res5``). Shifted-window attention pads every map to a
            multiple of the window itself (as in mmpretrain/mmdet and the original Swin); a
            multiple of 32 x window (224 for window 7) makes every map a whole number of windows.
        frozen_stages (int): mmpretrain's: -1 none; k >= 0 freezes the patch embedding and stages
            0..k (eval mode, ``requires_grad=False``, applied at construction).
        **swin_kwargs: ``GreenSwinTransformer`` / mmpretrain ``SwinTransformer`` arguments
            (``arch``, ``window_size``, ``drop_path_rate``, ``pad_small_map``, ``with_cp``, ...)
            except ``out_indices``.

    ``cfg`` form (``@configurable``): ``GreenSwinBackbone(cfg, input_shape)`` reads
    ``cfg.MODEL.GREENSWIN`` (see ``greenmim_mm.detectron2.config``).
    """

    out_norm_pattern = r'norm\d+\.'

    @configurable
    def __init__(self, *, out_features: Sequence[str] = FEATURE_NAMES,
                 size_divisibility: Optional[int] = None, **swin_kwargs):
        if 'out_indices' in swin_kwargs:
            raise ValueError('give out_features (res2..res5), not out_indices')
        indices = stage_indices(out_features)
        swin_kwargs = {k: plain_config(v) for k, v in swin_kwargs.items()}  # LazyConfig containers
        body = GreenSwinTransformer(out_indices=indices, **swin_kwargs)
        body.train()  # mmpretrain applies frozen_stages in train(); do it before any optimizer
        strides = [body.patch_stride * 2**i for i in indices]
        channels = [body.num_features[i] for i in indices]
        super().__init__(body, out_features, channels, strides,
                         size_divisibility or max(strides))

    def check_input(self, x) -> None:
        """Also ValueError when a stage's map is smaller than its window and ``pad_small_map``
        is off (mmpretrain's Swin would stop with an assertion naming its Python argument)."""
        super().check_input(x)
        height, width = x.shape[-2:]
        for i, stage in enumerate(self.body.stages):
            attn = stage.blocks[0].attn
            h, w = height // (self.body.patch_stride * 2**i), width // (self.body.patch_stride * 2**i)
            if min(h, w) < attn.window_size and not attn.pad_small_map:
                raise ValueError(
                    f'{type(self).__name__}: a {height}x{width} (padded) image gives stage {i} a '
                    f'{h}x{w} map, smaller than its window {attn.window_size}: set '
                    f'MODEL.GREENSWIN.PAD_SMALL_MAP True (pad_small_map=True: pads such maps), or '
                    f'MODEL.GREENSWIN.SIZE_DIVISIBILITY to a multiple of '
                    f'{self.body.patch_stride * 2**(len(self.body.stages) - 1) * attn.window_size} '
                    f'(every map a whole number of windows)')

    @classmethod
    def from_config(cls, cfg, input_shape: Optional[ShapeSpec] = None) -> dict:
        c = cfg.MODEL.GREENSWIN
        arch = c.ARCH
        if c.EMBED_DIM > 0:
            arch = dict(embed_dims=c.EMBED_DIM, depths=list(c.DEPTHS), num_heads=list(c.NUM_HEADS))
        return dict(
            out_features=list(c.OUT_FEATURES),
            size_divisibility=c.SIZE_DIVISIBILITY or None,
            arch=arch,
            img_size=c.IMG_SIZE,
            in_channels=input_shape.channels if input_shape and input_shape.channels else 3,
            patch_size=c.PATCH_SIZE,
            window_size=c.WINDOW_SIZE,
            drop_rate=c.DROP_RATE,
            drop_path_rate=c.DROP_PATH_RATE,
            use_abs_pos_embed=c.USE_ABS_POS_EMBED,
            pad_small_map=c.PAD_SMALL_MAP,
            with_cp=c.WITH_CP,
            frozen_stages=c.FROZEN_STAGES)


@BACKBONE_REGISTRY.register()
def build_greenswin_backbone(cfg, input_shape: ShapeSpec) -> GreenSwinBackbone:
    """``cfg.MODEL.BACKBONE.NAME = 'build_greenswin_backbone'``: the bare backbone."""
    return GreenSwinBackbone(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_greenswin_fpn_backbone(cfg, input_shape: ShapeSpec):
    """``cfg.MODEL.BACKBONE.NAME = 'build_greenswin_fpn_backbone'``: detectron2's FPN on it."""
    return fpn_from_config(build_greenswin_backbone(cfg, input_shape), cfg)

"""``GreenTwinsSVT`` (dense path) as a detectron2 backbone, with and without FPN.

Registered in detectron2's ``BACKBONE_REGISTRY``:

* ``build_greentwins_backbone``: :class:`GreenTwinsBackbone` from ``cfg.MODEL.GREENTWINS``.
* ``build_greentwins_fpn_backbone``: the same under detectron2's ``FPN`` (``cfg.MODEL.FPN``).

mmpretrain's ``SVT`` has no ``frozen_stages`` and no ``get_layer_depth``: this backbone has no
frozen-stages setting, and layer-wise lr decay is refused for it (``optim.py``).
"""
from typing import Optional, Sequence

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from greenmim_mm.models import GreenTwinsSVT

from .backbone import FEATURE_NAMES, MMBackbone, fpn_from_config, plain_config, stage_indices


class GreenTwinsBackbone(MMBackbone):
    """``GreenTwinsSVT``'s dense path (mmpretrain's Twins-SVT) as a detectron2 backbone.

    Outputs ``res2`` ... ``res5``: (B, embed_dims[i], H / s_i, W / s_i), s_i = 4, 8, 16, 32 for
    every SVT arch, after ``norm_after_stage{i}``; bitwise the maps of
    ``GreenTwinsSVT(..., out_indices=...)``. Parameters live under ``body.`` in mmpretrain's SVT
    layout, so converted greenmim_mm Twins checkpoints (``backbone.<key>``) load into
    ``...bottom_up.body.<key>`` (:class:`greenmim_mm.detectron2.GreenDetectionCheckpointer`).

    Args:
        out_features (Sequence[str]): any of ``res2`` ... ``res5`` in order.
        size_divisibility (int, optional): what detectron2 pads images to; default the largest
            output stride (32 for ``res5``). At a multiple of 32 each GSA's ``sr``-strided key
            convolution covers its whole map (sr x stage stride = 32 px); LSA pads every map to
            its window itself, padding keys excluded (``PaddingMaskedLSA``). 224 (32 x window 7)
            makes every map a whole number of windows.
        **svt_kwargs: ``GreenTwinsSVT`` / mmpretrain ``SVT`` arguments (``arch``, ``qkv_bias``,
            ``norm_after_stage``, ``drop_path_rate``, ...) except ``out_indices``.

    ``cfg`` form (``@configurable``): ``GreenTwinsBackbone(cfg, input_shape)`` reads
    ``cfg.MODEL.GREENTWINS`` (see ``greenmim_mm.detectron2.config``).

    Raises:
        ValueError: ``out_indices`` given, or ``out_features`` not a subset of res2..res5.
    """

    out_norm_pattern = r'norm_after_stage\d+\.'

    @configurable
    def __init__(self, *, out_features: Sequence[str] = FEATURE_NAMES,
                 size_divisibility: Optional[int] = None, **svt_kwargs):
        if 'out_indices' in svt_kwargs:
            raise ValueError('give out_features (res2..res5), not out_indices')
        indices = stage_indices(out_features)
        svt_kwargs = {k: plain_config(v) for k, v in svt_kwargs.items()}  # LazyConfig containers
        body = GreenTwinsSVT(out_indices=indices, **svt_kwargs)
        strides = [body.stage_stride(i) for i in indices]
        channels = [body.embed_dims[i] for i in indices]
        super().__init__(body, out_features, channels, strides,
                         size_divisibility or max(strides))

    @classmethod
    def from_config(cls, cfg, input_shape: Optional[ShapeSpec] = None) -> dict:
        c = cfg.MODEL.GREENTWINS
        return dict(
            out_features=list(c.OUT_FEATURES),
            size_divisibility=c.SIZE_DIVISIBILITY or None,
            arch=c.ARCH,
            in_channels=input_shape.channels if input_shape and input_shape.channels else 3,
            qkv_bias=c.QKV_BIAS,
            norm_after_stage=c.NORM_AFTER_STAGE,
            drop_rate=c.DROP_RATE,
            attn_drop_rate=c.ATTN_DROP_RATE,
            drop_path_rate=c.DROP_PATH_RATE)


@BACKBONE_REGISTRY.register()
def build_greentwins_backbone(cfg, input_shape: ShapeSpec) -> GreenTwinsBackbone:
    """``cfg.MODEL.BACKBONE.NAME = 'build_greentwins_backbone'``: the bare backbone."""
    return GreenTwinsBackbone(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_greentwins_fpn_backbone(cfg, input_shape: ShapeSpec):
    """``cfg.MODEL.BACKBONE.NAME = 'build_greentwins_fpn_backbone'``: detectron2's FPN on it."""
    return fpn_from_config(build_greentwins_backbone(cfg, input_shape), cfg)

"""Detectron2 ``Backbone`` around an OpenMMLab-style backbone, and detectron2's FPN on top of it.

Uses only detectron2's stable backbone API (``Backbone``, ``ShapeSpec``, ``FPN``,
``LastLevelMaxPool``, ``LastLevelP6P7``: the same from v0.5 to upstream main; see detectron2's
``docs/tutorials/write-models.md``).
"""
import math
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.modeling.backbone import FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from torch import nn

FEATURE_NAMES = ('res2', 'res3', 'res4', 'res5')  # stage i -> 'res{i + 2}', stride 4 * 2**i


def plain_config(value):
    """LazyConfig values (OmegaConf ``DictConfig`` / ``ListConfig``, e.g. a custom ``arch`` dict
    set in a LazyConfig) -> plain dicts / lists, which mmpretrain's ``isinstance(arch, dict)``
    checks accept; anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - detectron2 depends on omegaconf
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def stage_indices(out_features: Sequence[str]) -> tuple:
    """``('res2', 'res4')`` -> ``(0, 2)``; ValueError for other names or an unsorted list."""
    unknown = [f for f in out_features if f not in FEATURE_NAMES]
    if unknown or not out_features:
        raise ValueError(f'out_features must be a non-empty subset of {FEATURE_NAMES}; '
                         f'got {list(out_features)}')
    indices = tuple(FEATURE_NAMES.index(f) for f in out_features)
    if list(indices) != sorted(set(indices)):
        raise ValueError(f'out_features must be in stage order without repeats; got {out_features}')
    return indices


class MMBackbone(Backbone):
    """A detectron2 ``Backbone`` whose features come from an OpenMMLab-style backbone ``body``.

    ``body(x)`` must return a tuple of (B, C_i, H / s_i, W / s_i) maps, one per name in
    ``out_features`` (mmpretrain / mmdet convention: ``out_indices``). ``forward`` returns them
    unchanged as ``{name: map}``: the features are exactly ``body``'s.

    Args:
        body (nn.Module): the backbone; its parameters appear as ``body.<name>`` (so a converted
            ``backbone.<name>`` checkpoint maps to ``<prefix>body.<name>``).
        out_features (Sequence[str]): names of the returned maps (``res2`` ... ``res5``).
        channels (Sequence[int]): channels of each map.
        strides (Sequence[int]): stride of each map in pixels.
        size_divisibility (int): what detectron2 pads input images to (a multiple of the largest
            stride).

    Class attribute ``out_norm_pattern`` (regex): the body's per-output norms, which a converted
    pre-training checkpoint may lack (pre-training normalises only the last stage); see
    :class:`greenmim_mm.detectron2.GreenDetectionCheckpointer`. Empty: none may be missing.

    Raises:
        ValueError: lengths differ, or ``size_divisibility`` is not a multiple of the largest
            stride; in ``forward`` (``check_input``), an input that is not 4-D or whose height or
            width is not a multiple of the largest stride (the maps would not align in the FPN).
    """

    out_norm_pattern = ''

    def __init__(self, body: nn.Module, out_features: Sequence[str], channels: Sequence[int],
                 strides: Sequence[int], size_divisibility: int):
        super().__init__()
        if not len(out_features) == len(channels) == len(strides):
            raise ValueError(f'out_features {out_features}, channels {channels} and strides '
                             f'{strides} must have the same length')
        if size_divisibility % max(strides):
            raise ValueError(f'size_divisibility {size_divisibility} must be a multiple of the '
                             f'largest stride {max(strides)}')
        self.body = body
        self._out_features = list(out_features)
        self._out_feature_channels = dict(zip(out_features, map(int, channels)))
        self._out_feature_strides = dict(zip(out_features, map(int, strides)))
        self._size_divisibility = int(size_divisibility)

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def check_input(self, x: torch.Tensor) -> None:
        """ValueError unless x is (B, C, H, W) with H, W multiples of the largest stride."""
        if x.dim() != 4:
            raise ValueError(f'{type(self).__name__} takes (B, C, H, W) images; '
                             f'got {tuple(x.shape)}')
        stride = max(self._out_feature_strides.values())
        if x.shape[-2] % stride or x.shape[-1] % stride:
            raise ValueError(f'{type(self).__name__}: image size {tuple(x.shape[-2:])} is not a '
                             f'multiple of {stride}; pad it (detectron2 pads to size_divisibility '
                             f'= {self.size_divisibility})')

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x (B, C, H, W), H, W multiples of the largest stride -> {name: (B, C_i, H/s_i, W/s_i)}"""
        self.check_input(x)
        outs = self.body(x)
        if len(outs) != len(self._out_features):
            raise RuntimeError(f'{type(self.body).__name__} returned {len(outs)} maps for '
                               f'out_features {self._out_features}')
        return dict(zip(self._out_features, outs))


class AlignedFPN(FPN):
    """detectron2's ``FPN``; images are padded to a multiple of its own size divisibility (the
    largest input stride) *and* of its bottom-up backbone's (e.g. a multiple of the windows).
    ValueError (yacs and LazyConfigs alike) when ``in_features`` names a feature the backbone
    does not output."""

    def __init__(self, bottom_up: Backbone, in_features: Sequence[str], *args, **kwargs):
        check_fpn_features(in_features, list(bottom_up.output_shape()))
        super().__init__(bottom_up, in_features, *args, **kwargs)

    @property
    def size_divisibility(self) -> int:
        own = super().size_divisibility
        theirs = self.bottom_up.size_divisibility
        return own * theirs // math.gcd(own, theirs)


def check_fpn_features(in_features: Sequence[str], out_features: Sequence[str]) -> None:
    """ValueError unless every FPN input is a backbone output (detectron2 itself stops with a
    bare ``KeyError: 'res2'``)."""
    missing = [f for f in in_features if f not in out_features]
    if missing:
        raise ValueError(f'FPN in_features (MODEL.FPN.IN_FEATURES) {list(in_features)} ask for '
                         f'{missing}, which the backbone does not output (its out_features, '
                         f'MODEL.GREENSWIN/GREENTWINS.OUT_FEATURES: {list(out_features)})')


# The heads each detectron2 meta-architecture builds on the FPN (their cfg.MODEL.<KEY>.IN_FEATURES).
HEADS_OF = {'GeneralizedRCNN': ('RPN', 'ROI_HEADS'), 'ProposalNetwork': ('RPN', ),
            'RetinaNet': ('RETINANET', ), 'PanopticFPN': ('RPN', 'ROI_HEADS', 'SEM_SEG_HEAD')}


def head_features(cfg) -> List[Tuple[str, str]]:
    """``(config key, feature)`` for every FPN level the model's heads read (RPN only when it is
    the proposal generator)."""
    keys = HEADS_OF.get(cfg.MODEL.META_ARCHITECTURE, ())
    if cfg.MODEL.PROPOSAL_GENERATOR.NAME != 'RPN':
        keys = tuple(k for k in keys if k != 'RPN')
    return [(f'MODEL.{k}.IN_FEATURES', f) for k in keys for f in cfg.MODEL[k].IN_FEATURES]


def top_block_from_config(cfg, bottom_up: Backbone) -> nn.Module:
    """detectron2's top block for the heads: ``LastLevelP6P7`` (P6 = 3x3/2 conv of ``res5``, P7
    of P6) when a head reads ``p7`` (RetinaNet, as ``build_retinanet_resnet_fpn_backbone``),
    else ``LastLevelMaxPool`` (P6 = P5 subsampled, as ``build_resnet_fpn_backbone``). The P6/P7
    input is ``res5`` when it is an FPN input, else the last FPN input."""
    if 'p7' not in {f for _, f in head_features(cfg)}:
        return LastLevelMaxPool()
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    source = 'res5' if 'res5' in in_features else in_features[-1]
    shapes = bottom_up.output_shape()
    if source not in shapes:  # AlignedFPN names the missing FPN input
        return LastLevelMaxPool()
    return LastLevelP6P7(shapes[source].channels, cfg.MODEL.FPN.OUT_CHANNELS, in_feature=source)


def check_head_features(cfg, fpn: FPN) -> None:
    """ValueError naming the config key and the level when a head reads a level the FPN does
    not output (detectron2 itself stops with a bare ``KeyError: 'p7'``)."""
    levels = list(fpn.output_shape())
    for key, feature in head_features(cfg):
        if feature not in levels:
            raise ValueError(
                f'{key} asks for {feature!r}, which the FPN does not output: its levels are '
                f'{levels} (MODEL.FPN.IN_FEATURES {list(cfg.MODEL.FPN.IN_FEATURES)} plus the top '
                f'block {type(fpn.top_block).__name__}); p7 needs a RetinaNet-style P6P7 block '
                '(built when a head reads p7 and res5 is an FPN input)')


def fpn_from_config(bottom_up: Backbone, cfg) -> FPN:
    """``cfg.MODEL.FPN.*`` on ``bottom_up``, as detectron2's ``build_resnet_fpn_backbone`` (or
    ``build_retinanet_resnet_fpn_backbone`` when a head reads ``p7``:
    :func:`top_block_from_config`).

    Raises:
        ValueError: ``MODEL.FPN.IN_FEATURES`` names a feature the backbone does not output, or a
            head's ``IN_FEATURES`` a level the FPN does not output (the message names the key).
    """
    fpn = AlignedFPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block_from_config(cfg, bottom_up),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE)
    check_head_features(cfg, fpn)
    return fpn

"""What mmsegmentation lacks for our backbones: strict loading of a converted LocalMIM ViT and
the official LocalMIM ViT's average-pooling feature pyramid.

Imported by the segmentation configs (``custom_imports=dict(imports=['greenmim_mm',
'greenmim_mm.segmentation'])``); needs mmsegmentation (the ``seg`` extra), which ``import
greenmim_mm`` does not. Swin and Twins need nothing here: ``greenmim_mm.GreenSwinTransformer``
and ``greenmim_mm.GreenTwinsSVT`` build from an mmseg config as they are (mmpretrain backbones
returning NCHW maps), and the Swin layer-decay constructor is reached as
``greenmim_mm.SwinLayerDecayOptimWrapperConstructor`` from mmseg's scope.

:class:`LocalMIMSegMAE` is mmseg's ``MAE`` backbone (mmseg's BEiT with an absolute position
embedding: per-block relative position bias tables initialised to zero, layer scale
``init_values``, NCHW outputs of ``out_indices``), i.e. the backbone of the official LocalMIM ViT
segmentation code (``semantic_segmentation/backbone/vit.py``: BEiT's with ``use_abs_pos_emb``,
``use_rel_pos_bias``, ``init_values=1``). Its block keys are mmpretrain ``VisionTransformer``'s,
so ``tools/convert_checkpoint.py --src localmim-official-vit`` output loads as it is; what it
adds over mmseg's ``MAE`` is the load itself: strict (:class:`StrictPretrainedMixin`) where mmseg
loads with ``strict=False``, the position embedding resized to the segmentation input size
(mmseg's ``MAE.resize_abs_pos_embed``, bicubic), and only the parameters a ViT pre-training cannot
have (relative position tables, layer scales, their index buffers) left at their initial values.

:class:`LocalMIMFeature2Pyramid` is mmseg's ``Feature2Pyramid`` neck (BEiT's fpn1-fpn4) with the
official LocalMIM ViT's downsampling: ``nn.AvgPool2d`` where BEiT and mmseg max-pool
(``semantic_segmentation/backbone/vit.py``: ``fpn4 = nn.AvgPool2d(kernel_size=2, stride=2)``).
"""
from torch import nn
from mmseg.models.backbones import MAE
from mmseg.models.necks import Feature2Pyramid

from greenmim_mm.models.backbones.pretrained import StrictPretrainedMixin
from greenmim_mm.registry import MODELS


@MODELS.register_module()
class LocalMIMSegMAE(StrictPretrainedMixin, MAE):
    """mmseg ``MAE`` (same arguments; defaults as the official LocalMIM ViT-B segmentation
    backbone: ``init_values=1.0``, LayerNorm eps 1e-6) that loads converted weights strictly.

    Input (B, 3, H, W) with (H, W) = ``img_size`` (relative position tables are per window);
    output: tuple of (B, embed_dims, H / 16, W / 16) maps, one per ``out_indices`` entry.

    ``init_cfg=dict(type='Pretrained', checkpoint=FILE, prefix='backbone.')``: every tensor of
    FILE must fit (``pos_embed`` of any square grid is resized); missing from FILE may be only
    ``OPTIONAL_MISSING`` (zero relative position bias tables, layer scales at ``init_values``).
    Raises :class:`greenmim_mm.models.backbones.pretrained.PretrainedLoadError` otherwise.

    Keep ``MAE`` in the class name: mmseg's ``LayerDecayOptimizerConstructor`` gives BEiT's
    per-block layer ids only to backbones whose class name contains ``BEiT`` or ``MAE`` (others
    get one id for every parameter, silently).
    """
    OPTIONAL_MISSING = (r'layers\.\d+\.attn\.relative_position_bias_table',
                        r'layers\.\d+\.attn\.relative_position_index',
                        r'layers\.\d+\.gamma_[12]')

    def __init__(self, *args, init_values: float = 1.0,
                 norm_cfg: dict = dict(type='LN', eps=1e-6), **kwargs):
        super().__init__(*args, init_values=init_values, norm_cfg=norm_cfg, **kwargs)

    # init_weights: the mixin's. It hides the Pretrained init_cfg from MAE.init_weights (which
    # would load it with strict=False): MAE initialises afresh, then the mixin loads strictly.

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = f'{prefix}pos_embed'
        if key in state_dict and state_dict[key].shape != self.pos_embed.shape:
            state_dict[key] = self.resize_abs_pos_embed({'pos_embed': state_dict[key]})[
                'pos_embed'].to(self.pos_embed.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@MODELS.register_module()
class LocalMIMFeature2Pyramid(Feature2Pyramid):
    """mmseg ``Feature2Pyramid`` (same arguments, same outputs) whose 1/2 and 1/4 rescales
    average-pool, as the official LocalMIM ViT segmentation backbone's ``fpn4`` (and its
    patch-8 ``fpn3``/``fpn4``) do; mmseg's max-pools (BEiT's choice).

    Input: tuple of len(rescales) (B, C, H, W) maps; output: the same maps rescaled by
    ``rescales`` (no parameters in the pooling, so the state dict is mmseg's).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if hasattr(self, 'downsample_2x'):
            self.downsample_2x = nn.AvgPool2d(kernel_size=2, stride=2)
        if hasattr(self, 'downsample_4x'):
            self.downsample_4x = nn.AvgPool2d(kernel_size=4, stride=4)


__all__ = ['LocalMIMFeature2Pyramid', 'LocalMIMSegMAE']

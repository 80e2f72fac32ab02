"""Layer-wise learning-rate decay for models whose backbone knows its layer depths (mmdet too).

mmpretrain's ``LearningRateDecayOptimWrapperConstructor`` asks the *model* for
``get_layer_depth``: mmpretrain's ``ImageClassifier`` has it (it defers to the backbone, and
``GreenSwinTransformer`` inherits mmpretrain Swin's), mmdet's detectors do not, and mmdet's own
``LearningRateDecayOptimizerConstructor`` handles ConvNeXt only. This constructor falls back to the
backbone's ``get_layer_depth(name, prefix='backbone.')``: Swin's layer ids go to ``backbone.*``
and every other parameter (neck, RPN/RoI heads) gets the top id, i.e. the full learning rate.

Layer ids of a Swin with depths ``d`` (mmpretrain's rule, identical to SimMIM's
``get_swin_layer`` that GreenMIM's fine-tuning uses): ``patch_embed`` 0; block j of stage s
``sum(d[:s]) + j + 1``; the downsample of stage s ``sum(d[:s + 1])``; anything else
(``norm{i}``, ``absolute_pos_embed``, heads) ``sum(d) + 1``; lr scale
``layer_decay_rate ** (sum(d) + 1 - id)``.
"""
from functools import partial
from typing import Callable, List, Optional

from mmpretrain.engine.optimizers import LearningRateDecayOptimWrapperConstructor
from torch import nn

from greenmim_mm.registry import OPTIM_WRAPPER_CONSTRUCTORS


def backbone_layer_depth(model: nn.Module, prefix: str = 'backbone.') -> Callable:
    """``name -> (layer_id, num_layers)`` from ``model.backbone.get_layer_depth``."""
    backbone = getattr(model, 'backbone', None)
    if not hasattr(backbone, 'get_layer_depth'):
        raise NotImplementedError(
            f'layer-wise lr decay needs {type(model).__name__}.get_layer_depth or a backbone with '
            f'get_layer_depth (e.g. greenmim_mm.GreenSwinTransformer, mmpretrain.SwinTransformer); '
            f'got backbone {type(backbone).__name__}')
    return partial(backbone.get_layer_depth, prefix=prefix)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class SwinLayerDecayOptimWrapperConstructor(LearningRateDecayOptimWrapperConstructor):
    """mmpretrain's layer-decay constructor for any model with a layer-aware backbone.

    Same ``paramwise_cfg`` as mmpretrain's (``layer_decay_rate``, ``custom_keys`` with
    ``decay_mult``, ``norm_decay_mult``, ``bias_decay_mult``, ``flat_decay_mult``); the model's
    own ``get_layer_depth`` is used when it has one (mmpretrain classifiers), else the backbone's
    with prefix ``backbone.`` (mmdet detectors: neck and heads get the top layer id, scale 1).
    """

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   get_layer_depth: Optional[Callable] = None, **kwargs) -> None:
        if get_layer_depth is None and not hasattr(module, 'get_layer_depth'):
            get_layer_depth = backbone_layer_depth(module)
        super().add_params(params, module, prefix, get_layer_depth, **kwargs)

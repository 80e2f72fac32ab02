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

``custom_keys`` apply on top of the layer rate, as in mmengine's ``DefaultOptimWrapperConstructor``
(mmpretrain's stores ``lr_mult`` in the group and ignores it): the parameter's longest matching
key (substring of its name) sets ``lr = base_lr * layer scale * lr_mult`` and
``weight_decay = base_wd * decay_mult``, and the norm/bias/flat rules are skipped for it.
"""
from functools import partial
from typing import Callable, Dict, List, Optional

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


def no_layer_depth(name: str):
    """Every parameter in one layer (scale 1): lr decay off, e.g. Twins-SVT (mmpretrain's
    ``SVT`` defines no layer depths)."""
    return 0, 1


# paramwise_cfg keys of mmengine's default constructor that this one does not apply.
UNSUPPORTED_PARAMWISE = ('bias_lr_mult', 'dwconv_decay_mult', 'dcn_offset_lr_mult',
                         'bypass_duplicate')


def matching_custom_key(name: str, custom_keys: Dict[str, dict]) -> Optional[str]:
    """The custom key applying to parameter ``name``: the longest key that is a substring of it
    (ties: alphabetical first), as mmengine's and mmpretrain's constructors; None if none."""
    keys = sorted(sorted(custom_keys), key=len, reverse=True)
    return next((k for k in keys if k in name), None)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(
    name=['SwinLayerDecayOptimWrapperConstructor', 'LayerDecayOptimWrapperConstructor'])
class SwinLayerDecayOptimWrapperConstructor(LearningRateDecayOptimWrapperConstructor):
    """mmpretrain's layer-decay constructor for any model with a layer-aware backbone, with
    mmengine's ``custom_keys`` semantics.

    Same ``paramwise_cfg`` as mmpretrain's (``layer_decay_rate``, ``custom_keys``,
    ``norm_decay_mult``, ``bias_decay_mult``, ``flat_decay_mult``), but a custom key's ``lr_mult``
    multiplies the layer-decayed lr (mmengine's ``DefaultOptimWrapperConstructor`` rule on top of
    the layer rate; mmpretrain ignores it). The model's own ``get_layer_depth`` is used when it
    has one (mmpretrain classifiers), else the backbone's with prefix ``backbone.`` (mmdet and
    mmseg models: neck and heads get the top layer id, scale 1); a backbone without layer depths
    (Twins-SVT) is accepted with ``layer_decay_rate`` 1 only.

    Registered in greenmim_mm's registry, a child of mmengine's root: mmdet, mmseg and mmpretrain
    configs name it ``greenmim_mm.SwinLayerDecayOptimWrapperConstructor`` (alias
    ``greenmim_mm.LayerDecayOptimWrapperConstructor``).

    Raises:
        ValueError: ``paramwise_cfg`` has a key of mmengine's constructor this one does not apply
            (``bias_lr_mult``, ``dwconv_decay_mult``, ``dcn_offset_lr_mult``,
            ``bypass_duplicate``), or a custom key sets ``decay_mult`` with no ``weight_decay``.
        NotImplementedError: ``layer_decay_rate != 1`` and neither the model nor its backbone has
            ``get_layer_depth``.
    """

    def _validate_cfg(self) -> None:
        super()._validate_cfg()
        unsupported = [k for k in UNSUPPORTED_PARAMWISE if k in self.paramwise_cfg]
        if unsupported:
            raise ValueError(f'{type(self).__name__} does not apply paramwise_cfg {unsupported} '
                             '(mmengine DefaultOptimWrapperConstructor options); use custom_keys '
                             'with lr_mult / decay_mult')

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   get_layer_depth: Optional[Callable] = None, **kwargs) -> None:
        if get_layer_depth is None and not hasattr(module, 'get_layer_depth'):
            if (self.paramwise_cfg.get('layer_decay_rate', 1.0) == 1.0
                    and not hasattr(getattr(module, 'backbone', None), 'get_layer_depth')):
                get_layer_depth = no_layer_depth
            else:
                get_layer_depth = backbone_layer_depth(module)
        start = len(params)
        super().add_params(params, module, prefix, get_layer_depth, **kwargs)
        if prefix == '':  # the top call: every group of this model is in params[start:]
            self.apply_custom_keys(params[start:])

    def apply_custom_keys(self, groups: List[dict]) -> None:
        """Multiply each group's layer-decayed lr by its custom key's ``lr_mult`` (mmpretrain's
        ``add_params`` already set ``base_wd * decay_mult``)."""
        custom_keys = self.paramwise_cfg.get('custom_keys', {})
        for group in groups:
            key = matching_custom_key(group['param_name'], custom_keys)
            if key is None:
                continue
            group['lr'] = group['lr'] * custom_keys[key].get('lr_mult', 1.0)
            group['lr_mult'] = custom_keys[key].get('lr_mult', 1.0)

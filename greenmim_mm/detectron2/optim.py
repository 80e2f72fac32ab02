"""Optimizer parameter groups for detectron2 models with a greenmim_mm backbone.

Weight decay 0 on parameters whose name contains one of ``no_weight_decay_keys`` (norms, Swin's
relative position tables, the absolute position embedding: mmdet's Swin recipe) and optional
layer-wise lr decay over the backbone's layers, computed by mmpretrain's
``LearningRateDecayOptimWrapperConstructor`` with the backbone's own ``get_layer_depth``
(Swin: ``patch_embed`` 0, block j of stage s ``sum(depths[:s]) + j + 1``, downsample of stage s
``sum(depths[:s + 1])``; FPN, RPN and RoI heads get the top id, i.e. the full lr):
``lr = base_lr * layer_decay_rate ** (num_layers - 1 - layer_id)``. Twins-SVT has no layer depths
(mmpretrain's ``SVT`` defines none; the mmdet Twins configs train without layer decay): layer
decay is refused for it.

``custom_keys`` (mmengine's paramwise option; yacs ``SOLVER.CUSTOM_KEYS``) apply on top, as in
mmengine's ``DefaultOptimWrapperConstructor``: the longest key contained in a parameter's name
sets ``lr x lr_mult`` and ``weight_decay = base x decay_mult`` for it (so a key longer than a
``no_weight_decay_keys`` entry, e.g. ``bottom_up``, replaces that entry's ``decay_mult=0``:
repeat ``decay_mult=0.`` with a more specific key where needed).
"""
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch
from detectron2.solver.build import maybe_add_gradient_clipping

from greenmim_mm.engine.layer_decay import SwinLayerDecayOptimWrapperConstructor

from .checkpoint import body_prefix
from .config import NO_WEIGHT_DECAY_KEYS


def _layer_depth(model: torch.nn.Module, layer_decay_rate: float) -> Callable:
    prefix = body_prefix(model)
    body = model.get_submodule(prefix[:-1]) if prefix else None
    if hasattr(body, 'get_layer_depth'):
        return lambda name: body.get_layer_depth(name, prefix=prefix)
    if layer_decay_rate != 1.0:
        raise NotImplementedError(
            f'layer-wise lr decay needs a greenmim_mm backbone with get_layer_depth; the model '
            f'has {type(body).__name__ if body is not None else "none"}, which has none (e.g. '
            'Twins-SVT: mmpretrain\'s SVT defines no layer depths); set '
            'SOLVER.LAYER_DECAY_RATE 1.0')
    return lambda name: (0, 1)


def param_groups(model: torch.nn.Module, base_lr: float, weight_decay: float,
                 layer_decay_rate: float = 1.0,
                 no_weight_decay_keys: Sequence[str] = NO_WEIGHT_DECAY_KEYS,
                 custom_keys: Optional[Mapping[str, Mapping]] = None) -> List[Dict]:
    """Parameter groups (``params``, ``lr``, ``weight_decay``) of the trainable parameters,
    parameters with equal settings in one group. ``custom_keys``: ``{substring: dict(lr_mult=,
    decay_mult=)}`` (mmengine's rule, see the module doc), added to ``no_weight_decay_keys``'s
    ``decay_mult=0`` entries (a key in both takes ``custom_keys``' settings).

    Raises:
        NotImplementedError: ``layer_decay_rate != 1`` and the backbone has no ``get_layer_depth``.
    """
    keys = {k: dict(decay_mult=0.) for k in no_weight_decay_keys}
    keys.update({k: dict(v) for k, v in (custom_keys or {}).items()})
    constructor = SwinLayerDecayOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=base_lr, weight_decay=weight_decay)),
        dict(layer_decay_rate=layer_decay_rate, custom_keys=keys))
    per_param: List[Dict] = []
    constructor.add_params(per_param, model, get_layer_depth=_layer_depth(model, layer_decay_rate))
    groups: Dict[tuple, Dict] = {}
    for g in per_param:
        key = (g['lr'], g['weight_decay'])
        groups.setdefault(key, dict(params=[], lr=g['lr'], weight_decay=g['weight_decay']))
        groups[key]['params'].extend(g['params'])
    return list(groups.values())


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW from ``cfg.SOLVER`` (BASE_LR, WEIGHT_DECAY, BETAS, LAYER_DECAY_RATE,
    NO_WEIGHT_DECAY_KEYS, CUSTOM_KEYS) and detectron2's gradient clipping (CLIP_GRADIENTS); see
    :func:`param_groups`."""
    groups = param_groups(model, cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY,
                          cfg.SOLVER.LAYER_DECAY_RATE, cfg.SOLVER.NO_WEIGHT_DECAY_KEYS,
                          cfg.SOLVER.get('CUSTOM_KEYS'))
    adamw = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
    return adamw(groups, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS),
                 weight_decay=cfg.SOLVER.WEIGHT_DECAY)

"""greenmim_mm's registries: one node per mmpretrain registry, in scope ``greenmim_mm``.

Each registry is a direct child of mmengine's root registry (so ``type='greenmim_mm.Name'`` resolves
from any scope, e.g. an mmdet or mmpretrain config that lists ``greenmim_mm`` in ``custom_imports``)
and falls back to the matching mmpretrain registry for plain names (so a config with
``default_scope='greenmim_mm'`` uses every mmpretrain component by plain name, and ours too).
"""
from typing import Optional, Type

import mmpretrain.registry as mmpretrain_registry
from mmengine.registry import Registry

SCOPE = 'greenmim_mm'


class PluginRegistry(Registry):
    """A registry whose lookups of names it lacks fall back to an mmpretrain registry.

    Lookup order for ``Name`` or ``greenmim_mm.Name``: this registry, then ``fallback``
    (mmpretrain, then its parents, i.e. mmengine). Other scoped keys (``'mmdet.X'``) behave
    exactly as in mmengine. ``build`` runs in scope ``greenmim_mm`` unless the config names a
    ``_scope_``, so our components resolve their nested plain-name parts the same way whatever
    default scope the caller set (an mmdet or mmpretrain config, a test).
    """

    def __init__(self, name: str, fallback: Registry, locations: list):
        super().__init__(name, parent=fallback.parent, scope=SCOPE, locations=locations)
        self.fallback = fallback

    def get(self, key: str) -> Optional[Type]:
        scope, real_key = self.split_scope_key(key)
        if scope is None or scope == SCOPE:
            self.import_from_location()
            if real_key not in self._module_dict:
                found = self.fallback.get(real_key)
                if found is not None:
                    return found
        return super().get(key)

    def build(self, cfg, *args, **kwargs):
        if isinstance(cfg, dict) and '_scope_' not in cfg:
            cfg = cfg.copy()
            cfg['_scope_'] = SCOPE
        return super().build(cfg, *args, **kwargs)


def _plugin(name: str, fallback: Registry) -> PluginRegistry:
    # Importing the package registers every component (greenmim_mm/__init__.py imports them all).
    return PluginRegistry(name, fallback, locations=[SCOPE])


RUNNERS = _plugin('runner', mmpretrain_registry.RUNNERS)
RUNNER_CONSTRUCTORS = _plugin('runner constructor', mmpretrain_registry.RUNNER_CONSTRUCTORS)
LOOPS = _plugin('loop', mmpretrain_registry.LOOPS)
HOOKS = _plugin('hook', mmpretrain_registry.HOOKS)
LOG_PROCESSORS = _plugin('log processor', mmpretrain_registry.LOG_PROCESSORS)
OPTIMIZERS = _plugin('optimizer', mmpretrain_registry.OPTIMIZERS)
OPTIM_WRAPPERS = _plugin('optimizer_wrapper', mmpretrain_registry.OPTIM_WRAPPERS)
OPTIM_WRAPPER_CONSTRUCTORS = _plugin('optimizer wrapper constructor',
                                     mmpretrain_registry.OPTIM_WRAPPER_CONSTRUCTORS)
PARAM_SCHEDULERS = _plugin('parameter scheduler', mmpretrain_registry.PARAM_SCHEDULERS)
DATASETS = _plugin('dataset', mmpretrain_registry.DATASETS)
DATA_SAMPLERS = _plugin('data sampler', mmpretrain_registry.DATA_SAMPLERS)
TRANSFORMS = _plugin('transform', mmpretrain_registry.TRANSFORMS)
MODELS = _plugin('model', mmpretrain_registry.MODELS)
MODEL_WRAPPERS = _plugin('model_wrapper', mmpretrain_registry.MODEL_WRAPPERS)
WEIGHT_INITIALIZERS = _plugin('weight initializer', mmpretrain_registry.WEIGHT_INITIALIZERS)
BATCH_AUGMENTS = _plugin('batch augment', mmpretrain_registry.BATCH_AUGMENTS)
TASK_UTILS = _plugin('task util', mmpretrain_registry.TASK_UTILS)
METRICS = _plugin('metric', mmpretrain_registry.METRICS)
EVALUATORS = _plugin('evaluator', mmpretrain_registry.EVALUATORS)
VISUALIZERS = _plugin('visualizer', mmpretrain_registry.VISUALIZERS)
VISBACKENDS = _plugin('vis_backend', mmpretrain_registry.VISBACKENDS)

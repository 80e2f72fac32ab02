"""Training-engine components: optimizer-wrapper constructors, hooks (checkpoints, non-finite
loss, skipped samples, lazy runtime info) and the runner tools/train.py uses."""
from .autocast_wrapper import AutocastOptimWrapper
from .checkpoint_hook import (CheckpointMismatchError, LearningRateOverflowError,
                              SafeCheckpointHook)
from .lazy_runtime_info import LazyRuntimeInfoHook
from .layer_decay import SwinLayerDecayOptimWrapperConstructor, backbone_layer_depth
from .non_finite_loss import NonFiniteLossError, NonFiniteLossHook, NonFiniteWeightsError
from .skipped_samples import SkippedSamplesHook, TooManyBadSamplesError
from .work_dir_lock import WorkDirBusyError
from .runner import GreenRunner  # noqa: E402  (accumulation-aware auto_scale_lr, resume check)

__all__ = ['AutocastOptimWrapper', 'LazyRuntimeInfoHook', 'SafeCheckpointHook',
           'SwinLayerDecayOptimWrapperConstructor',
           'backbone_layer_depth',
           'NonFiniteLossError', 'NonFiniteLossHook', 'NonFiniteWeightsError', 'SkippedSamplesHook',
           'TooManyBadSamplesError', 'CheckpointMismatchError', 'LearningRateOverflowError',
           'WorkDirBusyError', 'GreenRunner']

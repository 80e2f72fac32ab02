"""Training-engine components: optimizer-wrapper constructors, the checkpoint hook."""
from .checkpoint_hook import SafeCheckpointHook
from .layer_decay import SwinLayerDecayOptimWrapperConstructor, backbone_layer_depth

__all__ = ['SafeCheckpointHook', 'SwinLayerDecayOptimWrapperConstructor', 'backbone_layer_depth']

"""Training-engine components: optimizer-wrapper constructors."""
from .layer_decay import SwinLayerDecayOptimWrapperConstructor, backbone_layer_depth

__all__ = ['SwinLayerDecayOptimWrapperConstructor', 'backbone_layer_depth']

from .green_swin import GreenSwinTransformer
from .localmim_vit import LocalMIMMAEViT

__all__ = ['GreenSwinTransformer', 'LocalMIMMAEViT']

from .green_swin import SWIN_NANO, GreenSwinTransformer
from .green_twins import TWINS_NANO, GreenTwinsSVT, PaddingMaskedLSA
from .localmim_vit import LocalMIMMAEViT

__all__ = ['GreenSwinTransformer', 'GreenTwinsSVT', 'LocalMIMMAEViT', 'PaddingMaskedLSA',
           'SWIN_NANO', 'TWINS_NANO']

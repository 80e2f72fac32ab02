from .greenmim import GreenMIM, draw_unit_mask, mask_generator_seed
from .localmim import LocalMIM
from .localmim_vit import LocalMIMViT

__all__ = ['GreenMIM', 'LocalMIM', 'LocalMIMViT', 'draw_unit_mask', 'mask_generator_seed']

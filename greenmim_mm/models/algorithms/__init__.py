from .greenmim import GreenMIM, draw_unit_mask, mask_generator_seed
from .localmim import LocalMIM

__all__ = ['GreenMIM', 'LocalMIM', 'draw_unit_mask', 'mask_generator_seed']

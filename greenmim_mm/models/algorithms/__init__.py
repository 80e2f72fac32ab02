from .greenmim import GreenMIM, draw_unit_mask, mask_generator_seed

__all__ = ['GreenMIM', 'draw_unit_mask', 'mask_generator_seed']

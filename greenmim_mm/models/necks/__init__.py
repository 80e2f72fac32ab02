from .grid_decoder import MAEGridDecoder
from .unit_decoder import LinearUnitDecoder, MAEUnitDecoder
from .vit_scale_decoder import LocalMIMViTDecoder

__all__ = ['MAEGridDecoder', 'MAEUnitDecoder', 'LinearUnitDecoder', 'LocalMIMViTDecoder']

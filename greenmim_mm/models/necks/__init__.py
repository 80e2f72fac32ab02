from .grid_decoder import MAEGridDecoder
from .unit_decoder import LinearUnitDecoder, MAEUnitDecoder

__all__ = ['MAEGridDecoder', 'MAEUnitDecoder', 'LinearUnitDecoder']

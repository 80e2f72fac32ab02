from .unit_decoder import LinearUnitDecoder, MAEUnitDecoder

__all__ = ['MAEUnitDecoder', 'LinearUnitDecoder']

from .green_swin import GreenSwinTransformer

__all__ = ['GreenSwinTransformer']

from .hog import LocalMIMHOGGenerator
from .pixel import PixelTargetGenerator

__all__ = ['PixelTargetGenerator', 'LocalMIMHOGGenerator']

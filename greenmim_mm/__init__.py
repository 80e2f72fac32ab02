"""greenmim_mm: GreenMIM / LocalMIM masked-image-modeling pre-training for hierarchical vision
transformers, as an OpenMMLab plugin (mmpretrain / mmdet)."""
from .compat import apply_patches
from .version import __version__

apply_patches()

from . import registry  # noqa: E402
from .models import *  # noqa: E402,F401,F403
from . import datasets, engine  # noqa: E402,F401

__all__ = ['__version__', 'registry']

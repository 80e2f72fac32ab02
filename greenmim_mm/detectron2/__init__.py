"""greenmim_mm backbones for detectron2 (optional: ``import greenmim_mm.detectron2``).

Needs detectron2: ``GREENMIM_MM_EXTRAS=detectron2 tools/env.sh ...`` installs v0.5 without C++
ops; a detectron2 built from source works too (only its stable backbone, config, checkpoint and
engine APIs are used). Importing registers ``build_greenswin_backbone``,
``build_greenswin_fpn_backbone``, ``build_greentwins_backbone`` and
``build_greentwins_fpn_backbone`` in detectron2's ``BACKBONE_REGISTRY``.
"""
try:
    import detectron2  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'greenmim_mm.detectron2 needs detectron2: run with GREENMIM_MM_EXTRAS=detectron2 '
        'tools/env.sh ..., or install detectron2 from source (docs/detectron2.md)') from err

from .backbone import AlignedFPN, MMBackbone, fpn_from_config  # noqa: E402
from .checkpoint import (CheckpointError, GreenDetectionCheckpointer,  # noqa: E402
                         export_detectron2_backbone)
from .config import add_greenmim_config, get_cfg  # noqa: E402
from .data import demo_dataset_dicts, register_demo_coco  # noqa: E402
from .green_swin import (GreenSwinBackbone, build_greenswin_backbone,  # noqa: E402
                         build_greenswin_fpn_backbone)
from .green_twins import (GreenTwinsBackbone, build_greentwins_backbone,  # noqa: E402
                          build_greentwins_fpn_backbone)
from .optim import build_optimizer, param_groups  # noqa: E402
from .train import Trainer  # noqa: E402

__all__ = [
    'AlignedFPN', 'MMBackbone', 'fpn_from_config', 'CheckpointError',
    'GreenDetectionCheckpointer', 'export_detectron2_backbone', 'add_greenmim_config', 'get_cfg',
    'demo_dataset_dicts', 'register_demo_coco',
    'GreenSwinBackbone', 'build_greenswin_backbone', 'build_greenswin_fpn_backbone',
    'GreenTwinsBackbone', 'build_greentwins_backbone', 'build_greentwins_fpn_backbone',
    'build_optimizer', 'param_groups', 'Trainer'
]

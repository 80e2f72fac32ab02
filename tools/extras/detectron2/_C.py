"""greenmim_mm's stand-in for ``detectron2._C``, detectron2's C++/CUDA extension.

``tools/env.sh`` (``GREENMIM_MM_EXTRAS=detectron2``) installs this file as ``detectron2/_C.py``
into detectron2 v0.5 built from the registry's ``detectron2-cdo==0.5`` sdist, which ships without
the extension's sources. detectron2 imports ``_C`` at module level (``detectron2.layers``,
``detectron2.evaluation``), but Mask R-CNN / Faster R-CNN / RetinaNet with FPN on axis-aligned
boxes never call it: RoIAlign and NMS go through torchvision.

Every op of the extension raises :class:`MissingCppOpsError`, as does the ``detectron2::nms_rotated``
torch op, instead of silently computing nothing: rotated boxes (``nms_rotated``,
``box_iou_rotated``, ``ROIAlignRotated``), deformable convolution (``DeformConv``,
``ModulatedDeformConv``) and the C++ COCO evaluation (``COCOevalEvaluateImages``; use
``COCOEvaluator(..., use_fast_impl=False)``) need detectron2 built with its C++ ops. The three
queries ``detectron2.utils.collect_env`` makes (``get_compiler_version``, ``get_cuda_version``,
``has_cuda``) answer that no extension is built, so ``default_setup`` keeps working.

This module imports nothing from greenmim_mm or detectron2.
"""
import torch

STAND_IN = True  # lets tools tell this module from a compiled extension

MESSAGE = (
    'detectron2._C.{name} is not available: this detectron2 was installed by greenmim_mm '
    '(GREENMIM_MM_EXTRAS=detectron2) without its C++ ops, and detectron2._C is a stand-in. '
    'Rotated boxes (nms_rotated, box_iou_rotated, ROIAlignRotated), deformable convolution and '
    'the C++ COCO evaluation (use COCOEvaluator(..., use_fast_impl=False)) need detectron2 '
    'built with its C++ ops: build detectron2 from source (see the Detectron2 section of '
    "greenmim_mm's README).")


class MissingCppOpsError(NotImplementedError):
    """Raised by every op of the stand-in ``detectron2._C``."""


def _missing(name):
    def op(*args, **kwargs):
        raise MissingCppOpsError(MESSAGE.format(name=name))
    op.__name__ = op.__qualname__ = name
    return op


def __getattr__(name):
    """Any op of the real extension (``deform_conv_forward``, ``InstanceAnnotation``, ...)."""
    if name.startswith('__'):
        raise AttributeError(name)
    return _missing(name)


def get_compiler_version():
    return 'none (greenmim_mm stand-in for detectron2._C: no C++ ops built)'


def get_cuda_version():
    return 'none (greenmim_mm stand-in for detectron2._C: no C++ ops built)'


def has_cuda():
    return False


def _register_torch_ops():
    """``torch.ops.detectron2.nms_rotated`` (the compiled extension registers it) -> the error."""
    try:
        torch.ops.detectron2.nms_rotated  # noqa: B018  (already registered: compiled or ours)
        return None
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library('detectron2', 'DEF')
    lib.define('nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor')
    lib.impl('nms_rotated', _missing('nms_rotated'), 'CompositeExplicitAutograd')
    return lib


_TORCH_LIBRARY = _register_torch_ops()  # kept alive: dropping it unregisters the op

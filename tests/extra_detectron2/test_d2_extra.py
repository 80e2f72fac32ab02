"""The Detectron2 extra as tools/env.sh installs it: detectron2 v0.5 with the stand-in ``_C``."""
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip('detectron2', reason='needs the extra: GREENMIM_MM_EXTRAS=detectron2')

from detectron2 import _C  # noqa: E402

stand_in = pytest.mark.skipif(not getattr(_C, 'STAND_IN', False),
                              reason='detectron2 built with its C++ ops')


def test_mmdet_and_greenmim_mm_import_with_detectron2_installed():
    # A fresh interpreter: mmdet 3.3's d2_wrapper imports detectron2 when it is installed and
    # catches only ImportError, so a broken detectron2 breaks `import mmdet.models`.
    code = ('import mmdet.models, greenmim_mm\n'
            'from mmdet.models.detectors import d2_wrapper\n'
            'assert d2_wrapper.detectron2 is not None, "mmdet did not import detectron2"\n'
            'from greenmim_mm.registry import MODELS\n'
            'print(MODELS.get("GreenSwinTransformer").__name__)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == 'GreenSwinTransformer'


def _raises_missing_ops(fn, *args):
    with pytest.raises(_C.MissingCppOpsError, match='build detectron2 from source') as err:
        fn(*args)
    assert 'stand-in' in str(err.value)


@stand_in
def test_stand_in_C_raises_one_clear_error_for_every_op():
    from detectron2.layers import ROIAlignRotated, nms_rotated
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated
    boxes = torch.tensor([[10., 10., 8., 6., 30.], [11., 10., 8., 6., 20.]])
    _raises_missing_ops(nms_rotated, boxes, torch.tensor([0.9, 0.8]), 0.5)  # torch.ops.detectron2
    _raises_missing_ops(pairwise_iou_rotated, boxes, boxes)
    feats = torch.randn(1, 4, 8, 8)
    rois = torch.tensor([[0., 4., 4., 4., 4., 0.]])
    _raises_missing_ops(ROIAlignRotated((2, 2), 1.0, 0), feats, rois)
    # deformable convolution on CUDA (v0.5's DeformConv runs torchvision's deform_conv2d on CPU)
    _raises_missing_ops(_C.deform_conv_forward, feats)
    _raises_missing_ops(_C.modulated_deform_conv_forward, feats)
    _raises_missing_ops(_C.COCOevalAccumulate, {}, [])  # the C++ COCO evaluation
    with pytest.raises(AttributeError):
        _C.__path__  # noqa: B018  (a module, not a package)


@stand_in
def test_stand_in_C_keeps_collect_env_working():
    from detectron2.utils.collect_env import collect_env_info
    assert 'no C++ ops built' in collect_env_info()


def test_model_zoo_configs_found():
    import os.path as osp

    from detectron2 import model_zoo
    path = model_zoo.get_config_file('COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml')
    assert osp.isfile(path)
    lazy = model_zoo.get_config('common/models/mask_rcnn_fpn.py')
    assert lazy.model.roi_heads.num_classes == 80


def test_pillow_and_numpy_names_fixed():
    from detectron2.data.transforms import ExtentTransform
    from detectron2.structures import PolygonMasks, polygons_to_bitmask
    from PIL import Image
    assert ExtentTransform((0, 0, 4, 4), (2, 2)).interp == Image.BILINEAR
    square = [np.array([1., 1., 5., 1., 5., 5., 1., 5.])]
    assert PolygonMasks([square]).nonempty().tolist() == [True]  # np.bool in v0.5
    mask = polygons_to_bitmask(square, 8, 8)
    assert mask.dtype == bool and mask.sum() == 16  # pixel centres inside the 4x4 square

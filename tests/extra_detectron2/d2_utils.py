"""Shared paths and helpers of the Detectron2 tests (tests/extra_detectron2/test_*.py).

Those tests run in the Detectron2 extra's environment:

    GREENMIM_MM_EXTRAS=detectron2 tools/env.sh python -m pytest tests/extra_detectron2 -q

(``make test`` does it after the default suite); elsewhere each module skips itself
(``pytest.importorskip('detectron2')``).
"""
import os.path as osp

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
D2_CONFIGS = osp.join(REPO, 'configs', 'detectron2')
NANO_YAML = osp.join(D2_CONFIGS, 'mask_rcnn_greenswin_nano_fpn_demo_128px.yaml')
B_YAML = osp.join(D2_CONFIGS, 'mask_rcnn_greenswin_b_p4_w7_fpn_1x_coco.yaml')
B_LAZY = osp.join(D2_CONFIGS, 'mask_rcnn_greenswin_b_p4_w7_fpn_1x_coco.py')
NANO_LAZY = osp.join(D2_CONFIGS, 'mask_rcnn_greenswin_nano_fpn_demo_128px.py')
TWINS_NANO_YAML = osp.join(D2_CONFIGS, 'mask_rcnn_greentwins_nano_fpn_demo_128px.yaml')
TWINS_L_YAML = osp.join(D2_CONFIGS, 'mask_rcnn_greentwins_svt_l_fpn_1x_coco.yaml')
MMDET_NANO = osp.join(REPO, 'configs', 'detection', 'mask-rcnn_greenswin-nano_fpn_demo_128px.py')
MMDET_B = osp.join(REPO, 'configs', 'detection', 'mask-rcnn_greenswin-b-p4-w7_fpn_1x_coco.py')
MMDET_TWINS_NANO = osp.join(REPO, 'configs', 'detection',
                            'mask-rcnn_greentwins-nano_fpn_demo_128px.py')
MMDET_TWINS_L = osp.join(REPO, 'configs', 'detection', 'mask-rcnn_greentwins-svt-l_fpn_1x_coco.py')


def load_cfg(path, *opts):
    """greenmim_mm's detectron2 config from ``path`` with ``KEY VALUE`` overrides, on the CPU."""
    from greenmim_mm.detectron2 import get_cfg
    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(['MODEL.DEVICE', 'cpu', *opts])
    return cfg

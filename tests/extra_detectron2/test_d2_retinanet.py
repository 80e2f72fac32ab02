"""RetinaNet (P3-P7) on greenmim_mm's detectron2 backbones: the FPN gets detectron2's RetinaNet top
block (``LastLevelP6P7`` on res5, as ``build_retinanet_resnet_fpn_backbone``) when a head reads
p7, and a head asking for a level the FPN lacks is one error naming its config key (issue 20,
item 8; it used to be a bare ``KeyError: 'p7'``)."""
import pytest
import torch

pytest.importorskip('detectron2', reason='needs the extra: GREENMIM_MM_EXTRAS=detectron2')

from d2_utils import NANO_YAML, TWINS_NANO_YAML, load_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

RETINANET = ['MODEL.META_ARCHITECTURE', 'RetinaNet', 'MODEL.RETINANET.NUM_CLASSES', 5,
             'MODEL.ANCHOR_GENERATOR.SIZES', [[32], [64], [128], [256], [512]]]


def retinanet_cfg(yaml_path, in_features=('res3', 'res4', 'res5')):
    return load_cfg(yaml_path, *RETINANET, 'MODEL.FPN.IN_FEATURES', list(in_features))


@pytest.mark.parametrize('yaml_path', [NANO_YAML, TWINS_NANO_YAML], ids=['swin', 'twins'])
def test_retinanet_builds_trains_and_its_p6_p7_come_from_res5(yaml_path):
    torch.manual_seed(0)
    model = build_model(retinanet_cfg(yaml_path))
    fpn = model.backbone
    res5 = fpn.bottom_up.output_shape()['res5']
    assert isinstance(fpn.top_block, LastLevelP6P7) and fpn.top_block.in_feature == 'res5'
    assert fpn.top_block.p6.in_channels == res5.channels
    shapes = {k: (s.channels, s.stride) for k, s in fpn.output_shape().items()}
    assert shapes == {f'p{i}': (64, 2**i) for i in range(3, 8)}
    x = torch.randn(1, 3, 128, 128)
    model.eval()  # no drop path: the two passes below see the same res5
    with torch.no_grad():
        feats, bottom = fpn(x), fpn.bottom_up(x)
        # detectron2's RetinaNet rule written out: P6 = conv(C5), P7 = conv(relu(P6))
        p6 = fpn.top_block.p6(bottom['res5'])
        assert torch.equal(feats['p6'], p6)
        assert torch.equal(feats['p7'], fpn.top_block.p7(torch.relu(p6)))
    assert {k: tuple(v.shape[-2:]) for k, v in feats.items()} == {
        f'p{i}': (128 // 2**i, 128 // 2**i) for i in range(3, 8)}
    inst = Instances((128, 128), gt_boxes=Boxes(torch.tensor([[10., 20., 70., 90.]])),
                     gt_classes=torch.tensor([2]))
    model.train()
    with EventStorage():
        losses = model([dict(image=torch.rand(3, 128, 128) * 255, instances=inst)])
    assert set(losses) == {'loss_cls', 'loss_box_reg'}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert fpn.top_block.p7.weight.grad.abs().sum() > 0


def test_mask_rcnn_keeps_the_max_pool_top_block():
    model = build_model(load_cfg(NANO_YAML))
    assert isinstance(model.backbone.top_block, LastLevelMaxPool)


def test_a_missing_level_is_one_error_naming_the_key():
    """Without res5 among the FPN inputs there is no p7: the error names the head's key, the
    level and the FPN's levels."""
    cfg = retinanet_cfg(NANO_YAML, ('res2', 'res3', 'res4'))
    with pytest.raises(ValueError, match=r"MODEL.RETINANET.IN_FEATURES asks for 'p7', which the "
                                         r"FPN does not output: its levels are \['p2', 'p3', "
                                         r"'p4', 'p5', 'p6'\]"):
        build_model(cfg)
    cfg = load_cfg(NANO_YAML, 'MODEL.ROI_HEADS.IN_FEATURES', ['p2', 'p3', 'p8'])
    with pytest.raises(ValueError, match=r"MODEL.ROI_HEADS.IN_FEATURES asks for 'p8'"):
        build_model(cfg)

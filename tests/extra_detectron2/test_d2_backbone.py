"""GreenSwinBackbone / build_greenswin_fpn_backbone against our dense path and the mmdet configs."""
import pytest
import torch

pytest.importorskip('detectron2', reason='needs the extra: GREENMIM_MM_EXTRAS=detectron2')

from d2_utils import (B_LAZY, B_YAML, MMDET_B, MMDET_NANO, MMDET_TWINS_L,  # noqa: E402
                      MMDET_TWINS_NANO, NANO_YAML, TWINS_L_YAML, TWINS_NANO_YAML, load_cfg)
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone  # noqa: E402
from detectron2.modeling.backbone import FPN  # noqa: E402
from mmengine.config import Config  # noqa: E402

from greenmim_mm.detectron2 import GreenSwinBackbone, GreenTwinsBackbone, MMBackbone  # noqa: E402
from greenmim_mm.registry import MODELS  # noqa: E402


def mmdet_backbone(config_path):
    """The backbone of an mmdet config, without its pretrained init."""
    cfg = Config.fromfile(config_path).model.backbone
    cfg.pop('init_cfg', None)
    cfg['type'] = cfg['type'].replace('greenmim_mm.', '')
    return MODELS.build(cfg)


@pytest.mark.parametrize('yaml_path, mmdet_path, hw', [
    (NANO_YAML, MMDET_NANO, (128, 160)),
    (B_YAML, MMDET_B, (64, 96)),  # Swin-B; pad_small_map: stage maps smaller than the window
    (TWINS_NANO_YAML, MMDET_TWINS_NANO, (128, 160)),  # res5 4 x 5: LSA pads to window 4
    (TWINS_L_YAML, MMDET_TWINS_L, (64, 96)),  # maps smaller than LSA's window 7
], ids=['swin-nano', 'swin-b', 'twins-nano', 'twins-svt-l'])
def test_features_equal_the_dense_path_of_the_mmdet_config_bitwise(yaml_path, mmdet_path, hw):
    torch.manual_seed(0)
    d2 = build_backbone(load_cfg(yaml_path)).bottom_up.eval()
    mm = mmdet_backbone(mmdet_path).eval()
    assert type(d2.body) is type(mm)
    d2_sd, mm_sd = d2.body.state_dict(), mm.state_dict()
    assert {k: v.shape for k, v in d2_sd.items()} == {k: v.shape for k, v in mm_sd.items()}
    mm.load_state_dict(d2_sd)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        ours, ref = d2(x), mm(x)
    assert list(ours) == ['res2', 'res3', 'res4', 'res5']
    for (name, feat), expected in zip(ours.items(), ref):
        assert torch.equal(feat, expected), name


def test_output_shape_strides_channels_and_fpn():
    fpn = build_backbone(load_cfg(NANO_YAML))
    assert isinstance(fpn, FPN)
    shapes = fpn.bottom_up.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        'res2': (32, 4), 'res3': (64, 8), 'res4': (128, 16), 'res5': (256, 32)}
    b = build_backbone(load_cfg(B_YAML)).bottom_up.output_shape()
    assert [b[k].channels for k in ('res2', 'res3', 'res4', 'res5')] == [128, 256, 512, 1024]
    out = {k: (s.channels, s.stride) for k, s in fpn.output_shape().items()}
    assert out == {f'p{i}': (64, 2**i) for i in range(2, 7)}
    feats = fpn(torch.randn(1, 3, 128, 256))  # res5 4 x 8: at least the window (4)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        f'p{i}': (1, 64, 128 // 2**i, 256 // 2**i) for i in range(2, 7)}


def test_registered_builders_and_out_features():
    assert BACKBONE_REGISTRY.get('build_greenswin_backbone') is not None
    bare = build_backbone(load_cfg(NANO_YAML, 'MODEL.BACKBONE.NAME', 'build_greenswin_backbone',
                                   'MODEL.GREENSWIN.OUT_FEATURES', ['res3', 'res5']))
    assert isinstance(bare, GreenSwinBackbone) and bare.body.out_indices == (1, 3)
    feats = bare(torch.randn(1, 3, 128, 128))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {'res3': (1, 64, 16, 16),
                                                            'res5': (1, 256, 4, 4)}
    with pytest.raises(ValueError, match='subset of'):
        GreenSwinBackbone(out_features=['res6'])


def test_twins_output_shape_builders_and_padding():
    fpn = build_backbone(load_cfg(TWINS_NANO_YAML))
    assert isinstance(fpn, FPN) and isinstance(fpn.bottom_up, GreenTwinsBackbone)
    assert {k: (s.channels, s.stride) for k, s in fpn.bottom_up.output_shape().items()} == {
        'res2': (32, 4), 'res3': (64, 8), 'res4': (128, 16), 'res5': (256, 32)}
    large = build_backbone(load_cfg(TWINS_L_YAML, 'MODEL.GREENTWINS.SIZE_DIVISIBILITY', 224))
    assert [large.bottom_up.output_shape()[f'res{i}'].channels for i in range(2, 6)] == \
        [128, 256, 512, 1024]
    assert large.bottom_up.size_divisibility == 224 and large.size_divisibility == 224
    assert fpn.size_divisibility == 32
    bare = build_backbone(load_cfg(TWINS_NANO_YAML, 'MODEL.BACKBONE.NAME',
                                   'build_greentwins_backbone',
                                   'MODEL.GREENTWINS.OUT_FEATURES', ['res3', 'res5']))
    assert isinstance(bare, GreenTwinsBackbone) and bare.body.out_indices == (1, 3)
    feats = bare(torch.randn(1, 3, 96, 64))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {'res3': (1, 64, 12, 8),
                                                            'res5': (1, 256, 3, 2)}
    with pytest.raises(ValueError, match='not a multiple of 32'):
        bare(torch.randn(1, 3, 100, 64))
    with pytest.raises(ValueError, match='not out_indices'):
        GreenTwinsBackbone(arch='nano', out_indices=(3, ))
    from detectron2.modeling import build_model
    model = build_model(load_cfg(TWINS_NANO_YAML)).eval()
    images = model.preprocess_image([{'image': torch.zeros(3, 100, 70)}])
    assert tuple(images.tensor.shape[-2:]) == (128, 96)


def test_twins_drop_path_from_cfg_and_no_frozen_stages_key():
    cfg = load_cfg(TWINS_NANO_YAML, 'MODEL.GREENTWINS.DROP_PATH_RATE', 0.3)
    body = build_backbone(cfg).bottom_up.body
    drop = [getattr(layer.drop_path, 'drop_prob', 0.) for stage in body.stages for layer in stage]
    assert drop == pytest.approx(torch.linspace(0, 0.3, 8).tolist())
    with pytest.raises(AssertionError, match='Non-existent key: MODEL.GREENTWINS.FROZEN'):
        load_cfg(TWINS_NANO_YAML, 'MODEL.GREENTWINS.FROZEN_STAGES', 1)  # SVT has none (yacs)


def test_size_divisibility_and_padding():
    fpn = build_backbone(load_cfg(NANO_YAML, 'MODEL.GREENSWIN.SIZE_DIVISIBILITY', 0))
    assert fpn.bottom_up.size_divisibility == 32 and fpn.size_divisibility == 32
    fitted = build_backbone(load_cfg(B_YAML, 'MODEL.GREENSWIN.SIZE_DIVISIBILITY', 224))
    assert fitted.bottom_up.size_divisibility == 224 and fitted.size_divisibility == 224
    with pytest.raises(ValueError, match='not a multiple of 32'):
        fpn.bottom_up(torch.randn(1, 3, 100, 128))
    with pytest.raises(ValueError, match='multiple of the largest stride'):
        MMBackbone(torch.nn.Identity(), ['res5'], [8], [32], size_divisibility=48)
    # detectron2 pads each image of a batch to the backbone's divisibility before the backbone
    from detectron2.modeling import build_model
    model = build_model(load_cfg(NANO_YAML, 'MODEL.GREENSWIN.SIZE_DIVISIBILITY', 0)).eval()
    images = model.preprocess_image([{'image': torch.zeros(3, 100, 70)}])
    assert tuple(images.tensor.shape[-2:]) == (128, 96)
    # the demo config pads to 32 x window 4 = 128: every map a whole number of windows
    demo = build_model(load_cfg(NANO_YAML)).eval()
    assert demo.backbone.size_divisibility == 128
    images = demo.preprocess_image([{'image': torch.zeros(3, 100, 70)}])
    assert tuple(images.tensor.shape[-2:]) == (128, 128)


def test_demo_predictor_takes_non_square_images():
    """The reviewer's reproduction: a 480x640 image (resized to 96x128) used to stop inside
    mmpretrain's Swin with an assertion naming its Python argument (stage 3: a 3x4 map, window 4).
    The demo config now pads to 128; a config that still cannot run such an image says which
    detectron2 keys to set."""
    import numpy as np
    from detectron2.engine import DefaultPredictor
    image = np.zeros((480, 640, 3), np.uint8)
    out = DefaultPredictor(load_cfg(NANO_YAML))(image)
    assert out['instances'].image_size == (480, 640)
    old = DefaultPredictor(load_cfg(NANO_YAML, 'MODEL.GREENSWIN.SIZE_DIVISIBILITY', 0))
    with pytest.raises(ValueError, match=r'stage 3 a 3x4 map, smaller than its window 4: set '
                                         r'MODEL.GREENSWIN.PAD_SMALL_MAP True.*'
                                         r'SIZE_DIVISIBILITY to a multiple of 128'):
        old(image)
    padded = DefaultPredictor(load_cfg(NANO_YAML, 'MODEL.GREENSWIN.SIZE_DIVISIBILITY', 0,
                                       'MODEL.GREENSWIN.PAD_SMALL_MAP', True))
    assert padded(image)['instances'].image_size == (480, 640)


def test_frozen_stages_and_drop_path_from_cfg():
    fpn = build_backbone(load_cfg(NANO_YAML, 'MODEL.GREENSWIN.FROZEN_STAGES', 1,
                                  'MODEL.GREENSWIN.DROP_PATH_RATE', 0.3))
    body = fpn.bottom_up.body
    fpn.train()
    frozen = ('patch_embed.', 'stages.0.', 'stages.1.', 'norm0.', 'norm1.')
    for name, p in body.named_parameters():
        assert p.requires_grad == (not name.startswith(frozen)), name
    assert not body.patch_embed.training and not body.stages[1].training
    assert body.stages[2].training
    drop = [blk.ffn.dropout_layer.drop_prob if hasattr(blk.ffn.dropout_layer, 'drop_prob') else 0.
            for stage in body.stages for blk in stage.blocks]
    assert drop == pytest.approx(torch.linspace(0, 0.3, 8).tolist())


def test_fpn_mask_rcnn_settings_equal_the_model_zoo_base():
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    zoo = get_cfg()
    zoo.merge_from_file(model_zoo.get_config_file('Base-RCNN-FPN.yaml'))
    ours = load_cfg(B_YAML)
    for key in ('META_ARCHITECTURE', 'ANCHOR_GENERATOR', 'RPN', 'ROI_BOX_HEAD', 'ROI_MASK_HEAD',
                'FPN'):
        assert ours.MODEL[key] == zoo.MODEL[key], key
    assert ours.MODEL.ROI_HEADS.IN_FEATURES == zoo.MODEL.ROI_HEADS.IN_FEATURES
    assert ours.MODEL.ROI_HEADS.NAME == zoo.MODEL.ROI_HEADS.NAME
    assert ours.MODEL.MASK_ON and ours.INPUT.FORMAT == 'RGB'


def test_lazyconfig_swin_b_matches_the_yaml():
    from detectron2.config import LazyConfig, instantiate
    from detectron2.modeling import build_model
    cfg = LazyConfig.load(B_LAZY)
    lazy = instantiate(cfg.model)
    yacs = build_model(load_cfg(B_YAML))
    assert isinstance(lazy.backbone.bottom_up, GreenSwinBackbone)
    assert {k: v.shape for k, v in lazy.state_dict().items()} == \
        {k: v.shape for k, v in yacs.state_dict().items()}
    last_block = lazy.backbone.bottom_up.body.stages[3].blocks[1]
    assert last_block.ffn.dropout_layer.drop_prob == pytest.approx(0.3)
    assert lazy.input_format == 'RGB' and lazy.pixel_std.flatten().tolist() == \
        pytest.approx([58.395, 57.12, 57.375])
    cfg.optimizer.params.model = lazy
    optimizer = instantiate(cfg.optimizer)
    assert type(optimizer) is torch.optim.AdamW
    names = {id(p): n for n, p in lazy.named_parameters()}
    for group in optimizer.param_groups:
        assert group['lr'] == 1e-4
        for p in group['params']:
            no_decay = any(k in names[id(p)] for k in
                           ('norm', 'relative_position_bias_table', 'absolute_pos_embed'))
            assert group['weight_decay'] == (0.0 if no_decay else 0.05), names[id(p)]


def test_demo_lazyconfig_matches_the_demo_yaml():
    from detectron2.config import LazyConfig, instantiate
    from detectron2.modeling import build_model
    from d2_utils import NANO_LAZY
    cfg = LazyConfig.load(NANO_LAZY)
    lazy = instantiate(cfg.model)
    yacs = build_model(load_cfg(NANO_YAML))
    assert {k: v.shape for k, v in lazy.state_dict().items()} == \
        {k: v.shape for k, v in yacs.state_dict().items()}
    assert lazy.backbone.size_divisibility == yacs.backbone.size_divisibility == 128
    assert lazy.roi_heads.box_predictor.test_topk_per_image == 20
    assert lazy.roi_heads.num_classes == 5 and lazy.roi_heads.batch_size_per_image == 128
    assert (cfg.optimizer.lr, cfg.optimizer.params.layer_decay_rate) == (4e-4, 0.9)
    assert cfg.train.max_iter == 600 and cfg.dataloader.train.total_batch_size == 8


def test_lazyconfig_takes_a_custom_arch_dict():
    """The reviewer's reproduction: an arch dict set in a LazyConfig reaches the backbone as an
    OmegaConf DictConfig, which mmpretrain's ``isinstance(arch, dict)`` refused ('Custom arch
    needs a dict with keys ...' although the keys were right)."""
    from detectron2.config import LazyConfig, instantiate
    cfg = LazyConfig.load(B_LAZY)
    cfg.model.backbone.bottom_up.arch = dict(embed_dims=32, depths=[2, 2, 2, 2],
                                             num_heads=[2, 4, 4, 8])
    fpn = instantiate(cfg.model.backbone)
    assert fpn.bottom_up.body.embed_dims == 32
    assert [len(stage.blocks) for stage in fpn.bottom_up.body.stages] == [2, 2, 2, 2]


def test_fpn_in_features_must_be_backbone_outputs():
    with pytest.raises(ValueError, match=r"MODEL.FPN.IN_FEATURES\) \['res2', 'res3', 'res4', "
                                         r"'res5'\] ask for \['res2'\].*OUT_FEATURES"):
        build_backbone(load_cfg(NANO_YAML, 'MODEL.GREENSWIN.OUT_FEATURES',
                                ['res3', 'res4', 'res5']))
    # the same in a LazyConfig (used to be detectron2's bare KeyError: 'res2')
    from detectron2.config import LazyConfig, instantiate
    from d2_utils import NANO_LAZY
    cfg = LazyConfig.load(NANO_LAZY)
    cfg.model.backbone.bottom_up.out_features = ['res3', 'res4', 'res5']
    cfg.model.backbone.in_features = ['res2', 'res3', 'res4', 'res5']
    with pytest.raises(ValueError, match=r"FPN in_features .* ask for \['res2'\]"):
        instantiate(cfg.model.backbone)

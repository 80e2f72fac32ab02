"""Pictures of LocalMIM heads: pixel pictures invert the target, HOG glyphs, the tool's grid."""
import os.path as osp

import numpy as np
import torch
from mmengine.config import Config

import greenmim_mm  # noqa: F401
from greenmim_mm.apis.localmim_visualization import hog_glyphs, pixel_picture, to_uint8
from greenmim_mm.models.target_generators import LocalMIMHOGGenerator, PixelTargetGenerator
from greenmim_mm.registry import MODELS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CFG = osp.join(ROOT, 'configs', 'pretrain', 'localmim_swin-nano_demo_128px.py')
MEAN, STD = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])


def test_pixel_picture_of_the_target_is_the_image():
    imgs = (torch.rand(2, 3, 32, 32) * 255 - MEAN.view(-1, 1, 1)) / STD.view(-1, 1, 1)
    for norm_pix in (True, False):
        gen = PixelTargetGenerator(8, norm_pix=norm_pix)
        got = pixel_picture(gen, gen(imgs), imgs, MEAN, STD).astype(int)
        assert np.abs(got - to_uint8(imgs, MEAN, STD).astype(int)).max() <= 1


def test_hog_glyphs_draw_only_where_there_are_gradients():
    img = torch.full((1, 3, 32, 32), -1.0)
    img[..., 10:] = 1.0  # one vertical edge in the left cells
    gen = LocalMIMHOGGenerator(16, nbins=9)
    glyphs = hog_glyphs(gen, gen(img), (32, 32))
    assert glyphs.shape == (1, 32, 32, 3) and glyphs.dtype == np.uint8
    assert glyphs[0, :, :16].max() > 0 and glyphs[0, :, 16:].max() == 0


def test_tool_draws_every_head(demo_data_factory, tmp_path):
    data = demo_data_factory('lm_vis', train_per_class=1, val_per_class=1)
    from greenmim_mm.apis import localmim_visualization as vis
    cfg = Config.fromfile(DEMO_CFG)
    cfg.model.backbone.arch = dict(embed_dims=32, depths=[1, 1, 1, 1], num_heads=[2, 4, 4, 8])
    cfg.model.backbone.attn_backend = 'sdpa'
    cfg.model.heads[1].target_generator = dict(type='PixelTargetGenerator', cell=16)
    cfg.model.necks[1].pred_dims = 768
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    ckpt, cfg_file, out = (str(tmp_path / n) for n in ('m.pth', 'cfg.py', 'heads.png'))
    torch.save(dict(state_dict=model.state_dict()), ckpt)
    cfg.dump(cfg_file)
    vis.main([cfg_file, ckpt, '--out', out, '--num', '2', '--data-root', data])
    from PIL import Image
    picture = Image.open(out)
    assert picture.size == (2 * (128 + 2) + 2, (2 + 2 * 4) * (128 + 2) + 2)


def test_tool_known_failures_are_one_error_line(demo_data_factory, tmp_path):
    """Issue 19.7: each known failure of tools/visualize_localmim.py is one line naming the
    problem and exit status 1 (SystemExit with a message), no traceback."""
    from test_checkpoint_loading import run_tool
    data = demo_data_factory('lm_vis_err', train_per_class=1, val_per_class=1)
    cfg = Config.fromfile(DEMO_CFG)
    cfg.model.backbone.arch = dict(embed_dims=32, depths=[1, 1, 1, 1], num_heads=[2, 4, 4, 8])
    ckpt, cfg_file = str(tmp_path / 'm.pth'), str(tmp_path / 'cfg.py')
    torch.save(dict(state_dict=MODELS.build(cfg.model).state_dict()), ckpt)
    cfg.dump(cfg_file)
    other = str(tmp_path / 'other.pth')  # the demo's own architecture: depths 2-2-2-2
    torch.save(dict(state_dict=MODELS.build(Config.fromfile(DEMO_CFG).model).state_dict()),
               other)
    greenmim_cfg = osp.join(ROOT, 'configs', 'pretrain', 'greenmim_swin-nano_demo_128px.py')
    tool = 'tools/visualize_localmim.py'
    ok = ['--data-root', data, '--num', '1', '--out', str(tmp_path / 'x.png')]
    cases = {
        'missing config': ([str(tmp_path / 'nope.py'), ckpt, *ok], r'nope\.py'),
        'missing checkpoint': ([cfg_file, str(tmp_path / 'nope.pth'), *ok], r'nope\.pth'),
        'another architecture': ([cfg_file, other, *ok],
                                 r'other\.pth does not fit the config\'s model \(LocalMIM\): '
                                 r'\d+ not in the model: backbone\.stages\.0\.blocks\.1\.'),
        'GreenMIM config': ([greenmim_cfg, ckpt, *ok], r'model type GreenMIM is not a LocalMIM '
                            r'model .* tools/visualize_reconstruction\.py'),
        'missing data': ([cfg_file, ckpt, *ok[2:], '--data-root', str(tmp_path / 'nodata')],
                         r'nodata'),
        'missing output folder': ([cfg_file, ckpt, *ok[:4], '--out',
                                   str(tmp_path / 'no' / 'x.png')], r'no/x\.png'),
    }
    import re
    for name, (args, pattern) in cases.items():
        code = run_tool(tool, *args)
        assert isinstance(code, str), (name, code)
        assert code.startswith('visualize_localmim: error: ') and '\n' not in code, (name, code)
        assert re.search(pattern, code), (name, code)

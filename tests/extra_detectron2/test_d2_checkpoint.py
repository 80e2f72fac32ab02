"""GreenDetectionCheckpointer: converted greenmim_mm backbones load completely; bad files are
refused before anything is loaded."""
import functools
import importlib.util
import os.path as osp

import pytest
import torch

pytest.importorskip('detectron2', reason='needs the extra: GREENMIM_MM_EXTRAS=detectron2')

from d2_utils import NANO_YAML, REPO, TWINS_NANO_YAML, load_cfg  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from greenmim_mm.checkpoint.loading import CheckpointLoadError, UnsafeCheckpointError  # noqa: E402
from greenmim_mm.converters import convert_file  # noqa: E402
from greenmim_mm.detectron2 import CheckpointError, GreenDetectionCheckpointer  # noqa: E402
from greenmim_mm.models import GreenSwinTransformer, GreenTwinsSVT  # noqa: E402

NANO = dict(arch=dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[2, 4, 4, 8]), img_size=128,
            window_size=4)
# the Twins demo pre-training's backbone (configs/pretrain/greenmim_twins-nano_demo_128px.py)
TWINS_NANO = dict(arch='nano', qkv_bias=True, norm_after_stage=[False, False, False, True])
BODY = 'backbone.bottom_up.body.'
# per backbone: the d2 demo yaml, the pre-training backbone, the out norms it lacks
BACKBONES = {
    'swin': (NANO_YAML, lambda **kw: GreenSwinTransformer(out_indices=(3, ), **{**NANO, **kw}),
             [f'norm{i}.{w}' for i in range(3) for w in ('weight', 'bias')]),
    'twins': (TWINS_NANO_YAML,
              lambda **kw: GreenTwinsSVT(out_indices=(3, ), **{**TWINS_NANO, **kw}),
              [f'norm_after_stage{i}.{w}' for i in range(3) for w in ('weight', 'bias')]),
}


def pretraining_checkpoint(path, backbone='swin', **kwargs):
    """A GreenMIM-style pre-training checkpoint: backbone (last out norm only) + decoder +
    meta."""
    torch.manual_seed(1)
    body = BACKBONES[backbone][1](**kwargs)
    for p in body.parameters():
        torch.nn.init.normal_(p)
    sd = {f'backbone.{k}': v for k, v in body.state_dict().items()}
    sd['neck.decoder.weight'] = torch.randn(4, 4)
    torch.save({'state_dict': sd, 'meta': {'epoch': 1}}, path)
    return body.state_dict()


def nano_model(*opts, backbone='swin'):
    torch.manual_seed(0)
    return build_model(load_cfg(BACKBONES[backbone][0], *opts))


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize('backbone', BACKBONES)
def test_converted_backbone_loads_every_weight(tmp_path, backbone):
    source = pretraining_checkpoint(tmp_path / 'pretrain.pth', backbone)
    convert_file(str(tmp_path / 'pretrain.pth'), str(tmp_path / 'converted.pth'), 'greenmim_mm')
    model = nano_model(backbone=backbone)
    before = snapshot(model)
    GreenDetectionCheckpointer(model).load(str(tmp_path / 'converted.pth'))
    after = model.state_dict()
    for key, value in source.items():
        assert torch.equal(after[BODY + key], value), key
    kept = [k for k in after if k.startswith(BODY) and k[len(BODY):] not in source]
    assert sorted(kept) == sorted(BODY + k for k in BACKBONES[backbone][2])
    for key in kept + [k for k in after if not k.startswith(BODY)]:
        assert torch.equal(after[key], before[key]), key


def load_tool():
    path = osp.join(REPO, 'tools', 'convert_checkpoint_detectron2.py')
    spec = importlib.util.spec_from_file_location('convert_checkpoint_detectron2', path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.mark.parametrize('backbone', BACKBONES)
def test_detectron2_layout_loads_with_plain_detection_checkpointer(tmp_path, capsys, backbone):
    source = pretraining_checkpoint(tmp_path / 'pretrain.pth', backbone)
    convert_file(str(tmp_path / 'pretrain.pth'), str(tmp_path / 'converted.pth'), 'greenmim_mm')
    tool = load_tool()
    tool.main([str(tmp_path / 'converted.pth'), str(tmp_path / 'd2.pth')])
    assert f'({len(source)} tensors under backbone.bottom_up.body.)' in capsys.readouterr().out
    for checkpointer in (DetectionCheckpointer, GreenDetectionCheckpointer):
        model = nano_model(backbone=backbone)
        before = snapshot(model)
        checkpointer(model).load(str(tmp_path / 'd2.pth'))
        after = model.state_dict()
        for key, value in source.items():
            assert torch.equal(after[BODY + key], value), (checkpointer.__name__, key)
        for key in after:
            if key.startswith(BODY) and key[len(BODY):] in source:
                continue
            assert torch.equal(after[key], before[key]), key  # norm0-2, FPN, heads: as built
    with pytest.raises(SystemExit, match='is the input file'):
        tool.main([str(tmp_path / 'd2.pth'), str(tmp_path / 'd2.pth')])
    with pytest.raises(SystemExit, match='not a converted greenmim_mm backbone'):
        tool.main([str(tmp_path / 'd2.pth'), str(tmp_path / 'again.pth')])
    with pytest.raises(SystemExit, match='only backbone.. keys; found neck.decoder.weight'):
        tool.main([str(tmp_path / 'pretrain.pth'), str(tmp_path / 'again.pth')])
    assert not (tmp_path / 'again.pth').exists()


def test_detectron2_checkpoint_roundtrip(tmp_path):
    model = nano_model()
    GreenDetectionCheckpointer(model, save_dir=str(tmp_path)).save('model_x')
    other = nano_model()
    torch.manual_seed(5)
    for p in other.parameters():
        torch.nn.init.normal_(p)
    GreenDetectionCheckpointer(other).load(str(tmp_path / 'model_x.pth'))
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def _refused(model, path, match, error=CheckpointError):
    before = snapshot(model)
    with pytest.raises(error, match=match) as err:
        GreenDetectionCheckpointer(model).load(str(path))
    assert str(path) in str(err.value)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f'{key} changed by a refused load'


def test_refuses_other_windows_with_nothing_loaded(tmp_path):
    pretraining_checkpoint(tmp_path / 'w7.pth', window_size=7)
    convert_file(str(tmp_path / 'w7.pth'), str(tmp_path / 'converted.pth'), 'greenmim_mm')
    _refused(nano_model(), tmp_path / 'converted.pth',
             'wrong shape: .*relative_position_bias_table')


def test_refuses_unconverted_pickled_and_foreign_files(tmp_path):
    model = nano_model()
    pretraining_checkpoint(tmp_path / 'pretrain.pth')
    _refused(model, tmp_path / 'pretrain.pth', 'only backbone.* keys; found neck.decoder.weight')
    torch.save({'state_dict': {'backbone.x': torch.ones(1)}, 'hook': functools.partial(print)},
               tmp_path / 'code.pth')
    _refused(model, tmp_path / 'code.pth', 'functools.partial', UnsafeCheckpointError)
    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
    _refused(model, tmp_path / 'junk.pth', 'cannot read', CheckpointLoadError)
    torch.save({'model': {}}, tmp_path / 'model.pkl')
    _refused(model, tmp_path / 'model.pkl', r'pickles \(.pkl\) are not loaded')
    torch.save({'model': {'backbone.fpn_lateral2.weight': torch.ones(1)}}, tmp_path / 'r50.pth')
    _refused(model, tmp_path / 'r50.pth', 'missing: backbone.bottom_up.body.')
    source = pretraining_checkpoint(tmp_path / 'p2.pth')
    partial = {f'backbone.{k}': v for k, v in source.items() if 'stages.3' not in k}
    torch.save({'state_dict': partial}, tmp_path / 'partial.pth')
    _refused(model, tmp_path / 'partial.pth', 'missing: backbone.bottom_up.body.stages.3')


def test_twins_refuses_other_archs_and_swin_weights_with_nothing_loaded(tmp_path):
    model = nano_model(backbone='twins')
    pretraining_checkpoint(tmp_path / 'small.pth', 'twins', arch='small')
    convert_file(str(tmp_path / 'small.pth'), str(tmp_path / 'small_c.pth'), 'greenmim_mm')
    _refused(model, tmp_path / 'small_c.pth', 'wrong shape: .*patch_embeds.0.norm.bias')
    pretraining_checkpoint(tmp_path / 'swin.pth')
    convert_file(str(tmp_path / 'swin.pth'), str(tmp_path / 'swin_c.pth'), 'greenmim_mm')
    _refused(model, tmp_path / 'swin_c.pth',
             'missing: backbone.bottom_up.body.patch_embeds.0.*unexpected: .*body.norm3.bias')
    source = pretraining_checkpoint(tmp_path / 'p.pth', 'twins')
    partial = {f'backbone.{k}': v for k, v in source.items() if k != 'norm_after_stage3.weight'}
    torch.save({'state_dict': partial}, tmp_path / 'partial.pth')
    # the last out norm may be missing too (pattern norm_after_stage<i>), as Swin's norm3
    GreenDetectionCheckpointer(model).load(str(tmp_path / 'partial.pth'))
    partial.pop('backbone.position_encodings.3.proj.weight')
    torch.save({'state_dict': partial}, tmp_path / 'partial2.pth')
    _refused(model, tmp_path / 'partial2.pth', 'missing: .*position_encodings.3.proj.weight')


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f'echo PWNED > {self.marker}', ))


def test_plain_detection_checkpointer_loads_through_the_safe_loader(tmp_path):
    """Importing greenmim_mm.detectron2 routes detectron2's own ``DetectionCheckpointer`` (what
    its tools/lazyconfig_train_net.py uses) through the safe loader: a file that pickles a call
    is refused and does not run, with a ``.pth`` or a ``.pkl`` name (detectron2 calls
    ``pickle.load`` on ``.pkl`` files)."""
    import pickle
    marker = tmp_path / 'marker'
    torch.save({'model': _RunsCode(str(marker))}, str(tmp_path / 'evil.pth'))
    (tmp_path / 'evil.pkl').write_bytes(pickle.dumps({'model': _RunsCode(str(marker)),
                                                      '__author__': 'x'}))
    model = torch.nn.Linear(2, 2)
    with pytest.raises(UnsafeCheckpointError, match='evil.pth'):
        DetectionCheckpointer(model).load(str(tmp_path / 'evil.pth'))
    with pytest.raises(CheckpointError, match=r'evil\.pkl: detectron2 model-zoo pickles'):
        DetectionCheckpointer(model).load(str(tmp_path / 'evil.pkl'))
    assert not marker.exists()


def test_missing_checkpoint_is_one_error_naming_it_on_the_lazyconfig_route(tmp_path):
    """``lazyconfig_train_net.py train.init_checkpoint=<typo>``: fvcore asserted ('Checkpoint ...
    not found!', a traceback); now detectron2's own checkpointer raises a ``CheckpointError``
    naming the file, which its script prints as one line (the excepthook of
    ``greenmim_mm.detectron2``). An empty path still loads nothing, as detectron2's."""
    missing = str(tmp_path / 'typo.pth')
    for checkpointer in (DetectionCheckpointer, GreenDetectionCheckpointer):
        with pytest.raises(CheckpointError, match=rf'^checkpoint not found: {missing}$'):
            checkpointer(torch.nn.Linear(2, 2)).load(missing)
        with pytest.raises(CheckpointError, match='checkpoint not found'):
            checkpointer(torch.nn.Linear(2, 2)).resume_or_load(missing, resume=False)
        assert checkpointer(torch.nn.Linear(2, 2)).load('') == {}

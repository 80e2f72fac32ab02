"""AdamW parameter groups: weight decay keys and layer-wise lr decay, against a brute-force rule."""
import pytest
import torch

pytest.importorskip('detectron2', reason='needs the extra: GREENMIM_MM_EXTRAS=detectron2')

from d2_utils import NANO_YAML, TWINS_NANO_YAML, load_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from greenmim_mm.detectron2 import Trainer, param_groups  # noqa: E402

BODY = 'backbone.bottom_up.body.'


def swin_layer_id(name, depths):
    """Swin's layer ids written out (SimMIM's get_swin_layer / mmpretrain's rule)."""
    top = sum(depths) + 1
    if not name.startswith(BODY):
        return top
    name = name[len(BODY):]
    if name.startswith('patch_embed'):
        return 0
    if name.startswith('stages.'):
        _, s, part, j = name.split('.')[:4]
        s = int(s)
        if part == 'downsample':
            return sum(depths[:s + 1])
        return sum(depths[:s]) + int(j) + 1
    return top


def test_layer_decay_and_no_weight_decay_keys_brute_force():
    cfg = load_cfg(NANO_YAML)
    model = build_model(cfg)
    depths = [2, 2, 2, 2]
    groups = param_groups(model, base_lr=4e-4, weight_decay=0.05, layer_decay_rate=0.9)
    got = {}
    for g in groups:
        for p in g['params']:
            got[id(p)] = (g['lr'], g['weight_decay'])
    named = dict(model.named_parameters())
    assert len(got) == len(named)
    for name, p in named.items():
        lr = 4e-4 * 0.9 ** (sum(depths) + 1 - swin_layer_id(name, depths))
        wd = 0.0 if any(k in name for k in ('norm', 'relative_position_bias_table')) else 0.05
        assert got[id(p)][0] == pytest.approx(lr, rel=1e-12), name
        assert got[id(p)][1] == wd, name
    assert len(groups) < len(named)  # equal settings share a group


def test_trainer_optimizer_from_cfg():
    cfg = load_cfg(NANO_YAML)
    model = build_model(cfg)
    opt = Trainer.build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults['betas'] == (0.9, 0.999)
    assert max(g['lr'] for g in opt.param_groups) == pytest.approx(4e-4)
    cfg.SOLVER.OPTIMIZER = 'LAMB'
    with pytest.raises(ValueError, match='ADAMW or SGD'):
        Trainer.build_optimizer(cfg, model)
    cfg.SOLVER.OPTIMIZER = 'SGD'
    assert isinstance(Trainer.build_optimizer(cfg, model), torch.optim.SGD)


def test_twins_no_weight_decay_keys_and_layer_decay_refused():
    cfg = load_cfg(TWINS_NANO_YAML)
    model = build_model(cfg)
    opt = Trainer.build_optimizer(cfg, model)  # the demo yaml: no layer decay
    names = {id(p): n for n, p in model.named_parameters()}
    assert sum(len(g['params']) for g in opt.param_groups) == len(names)
    for group in opt.param_groups:
        assert group['lr'] == pytest.approx(4e-4)
        for p in group['params']:
            no_decay = 'norm' in names[id(p)] or 'position_encodings' in names[id(p)]
            assert group['weight_decay'] == (0.0 if no_decay else 0.05), names[id(p)]
    cfg.SOLVER.LAYER_DECAY_RATE = 0.9
    with pytest.raises(NotImplementedError, match='GreenTwinsSVT, which has none'):
        Trainer.build_optimizer(cfg, model)


def test_custom_keys_lr_mult_and_decay_mult_on_top_of_layer_decay(tmp_path):
    """SOLVER.CUSTOM_KEYS (yaml) with mmengine's rule: the longest key contained in a name sets
    lr x lr_mult on top of the layer rate and weight_decay = 0.05 x decay_mult (issue 20,
    item 3; lr_mult used to be ignored)."""
    yaml = tmp_path / 'custom.yaml'
    yaml.write_text(f'_BASE_: "{NANO_YAML}"\nSOLVER:\n  CUSTOM_KEYS:\n'
                    '    bottom_up: {lr_mult: 0.1, decay_mult: 0.5}\n')
    cfg = load_cfg(str(yaml))
    model = build_model(cfg)
    opt = Trainer.build_optimizer(cfg, model)
    got = {id(p): (g['lr'], g['weight_decay']) for g in opt.param_groups for p in g['params']}
    keys = {'norm': (1.0, 0.0), 'relative_position_bias_table': (1.0, 0.0),
            'absolute_pos_embed': (1.0, 0.0), 'bottom_up': (0.1, 0.5)}
    depths = [2, 2, 2, 2]
    for name, p in model.named_parameters():
        matching = [k for k in keys if k in name]
        lr_mult, decay_mult = keys[max(matching, key=len)] if matching else (1.0, 1.0)
        lr = 4e-4 * 0.9 ** (sum(depths) + 1 - swin_layer_id(name, depths)) * lr_mult
        assert got[id(p)][0] == pytest.approx(lr, rel=1e-12), name
        assert got[id(p)][1] == pytest.approx(0.05 * decay_mult, rel=1e-12), name
    qkv = 'backbone.bottom_up.body.stages.0.blocks.0.attn.w_msa.qkv.weight'
    assert got[id(dict(model.named_parameters())[qkv])] == pytest.approx(
        (4e-4 * 0.9**8 * 0.1, 0.025), rel=1e-12)

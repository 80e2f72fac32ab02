"""The command-line tools: ``--help`` at once (options parsed before the stack is imported), and
known user errors as one line naming the problem and the fix, without a traceback."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TOOLS = sorted(p.name for p in (REPO / 'tools').glob('*.py') if not p.name.startswith('_'))
HEAVY = ('torch', 'mmengine', 'mmcv', 'mmpretrain', 'mmdet', 'greenmim_mm')
DEMO_PT = REPO / 'configs' / 'pretrain' / 'greenmim_swin-nano_demo_128px.py'
DEMO_FT = REPO / 'configs' / 'finetune' / 'greenswin-nano_greenmim-pt_demo-cls_128px.py'


def run_tool(tool, *args, cwd, timeout=600, extra_env=None):
    env = dict(os.environ, OMP_NUM_THREADS='1', **(extra_env or {}))
    return subprocess.run([sys.executable, str(REPO / 'tools' / tool), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def detectron2_importable():
    import importlib.util
    return importlib.util.find_spec('detectron2') is not None


def test_every_tool_is_covered():
    assert len(TOOLS) >= 14 and 'train.py' in TOOLS and 'train_detectron2.py' in TOOLS


@pytest.mark.parametrize('tool', TOOLS)
def test_help_answers_without_importing_the_stack(tool, tmp_path):
    """``-X importtime`` lists every module the run imported: none of the stack for --help."""
    if tool == 'train_detectron2.py' and not detectron2_importable():
        pytest.skip('detectron2 not installed (see the next test)')
    run = subprocess.run([sys.executable, '-X', 'importtime', str(REPO / 'tools' / tool), '--help'],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert 'usage:' in run.stdout
    imported = {line.rsplit('|', 1)[-1].strip() for line in run.stderr.splitlines()
                if line.startswith('import time:')}
    heavy = sorted(m for m in imported if m.split('.')[0] in HEAVY and tool != 'train_detectron2.py')
    assert not heavy, f'{tool} --help imports {heavy[:5]}'


@pytest.mark.parametrize('tool', TOOLS)
def test_help_takes_under_two_seconds(tool, tmp_path):
    """Best of three runs (the machine is shared; one slow start is not the tool's)."""
    if tool == 'train_detectron2.py' and not detectron2_importable():
        pytest.skip('detectron2 not installed (see the next test)')
    best = float('inf')
    for _ in range(3):
        start = time.perf_counter()
        run = run_tool(tool, '--help', cwd=tmp_path, timeout=120)
        best = min(best, time.perf_counter() - start)
        assert run.returncode == 0, run.stderr[-2000:]
        if best < 2.0:
            break
    assert best < 2.0, f'{tool} --help took {best:.2f} s'


@pytest.mark.skipif(detectron2_importable(), reason='detectron2 is installed')
def test_train_detectron2_without_detectron2_is_one_line(tmp_path):
    run = run_tool('train_detectron2.py', '--help', cwd=tmp_path, timeout=120)
    assert run.returncode == 1
    assert 'Traceback' not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('train_detectron2: error: detectron2 is not')
    assert 'GREENMIM_MM_EXTRAS=detectron2' in lines[0] and 'docs/detectron2.md' in lines[0]


def assert_one_line_error(run, prefix, *needles):
    assert run.returncode not in (0, None), run.stdout[-2000:]
    assert 'Traceback' not in run.stderr, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(prefix), last
    for needle in needles:
        assert needle in last, (needle, last)


def test_cfg_options_not_key_value_is_a_usage_error(tmp_path):
    run = run_tool('train.py', str(DEMO_PT), '--cfg-options', 'train_cfg.max_epochs', cwd=tmp_path)
    assert_one_line_error(run, 'train.py: error: --cfg-options:', "'train_cfg.max_epochs'",
                          'KEY=VALUE')


def test_train_wrong_cfg_options_key_is_one_line(tmp_path):
    """A well-formed key the component does not take (TypeError when mmengine builds it) or a
    type no registry holds (KeyError): one line naming the option, no traceback."""
    run = run_tool('train.py', str(DEMO_PT), '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                   'model.backbone.nonexistent_key=1', cwd=tmp_path)
    assert_one_line_error(run, 'train: error: --cfg-options model.backbone.nonexistent_key:',
                          "model.backbone takes no argument 'nonexistent_key'",
                          'unexpected keyword argument', 'drop the option')
    run = run_tool('train.py', str(DEMO_PT), '--work-dir', str(tmp_path / 'w2'), '--cfg-options',
                   'model.neck.type=NoSuchNeck', cwd=tmp_path)
    assert_one_line_error(run, 'train: error: --cfg-options model.neck.type=NoSuchNeck:',
                          'NoSuchNeck is not in the', 'registered type')


def test_test_wrong_cfg_options_key_is_one_line(tmp_path, tiny_demo):
    _, checkpoint = tiny_demo  # the model is built (and fails) before any weights are read
    run = run_tool('test.py', str(DEMO_FT), str(checkpoint), '--work-dir', str(tmp_path / 'w'),
                   '--cfg-options', 'model.head.no_such_arg=0.5', cwd=tmp_path)
    assert_one_line_error(run, 'test: error: --cfg-options model.head.no_such_arg:',
                          "model.head takes no argument 'no_such_arg'")
    run = run_tool('test.py', str(DEMO_FT), str(checkpoint), '--work-dir', str(tmp_path / 'w2'),
                   '--cfg-options', 'model.backbone.window_size=[4,4]', cwd=tmp_path)
    assert_one_line_error(run, 'test: error: --cfg-options model.backbone.window_size=[4, 4] '
                          '(the config has 4): check the value', 'TypeError')


def test_cfg_option_error_leaves_other_errors_alone():
    """Only an error the given options explain becomes a one-line message; any other TypeError /
    KeyError keeps its traceback (a bug, not a user error)."""
    from greenmim_mm.apis.launch import cfg_option_error
    unexpected = TypeError("Foo.__init__() got an unexpected keyword argument 'depth'")
    assert cfg_option_error(unexpected, {'model.backbone.depth': 3}).startswith(
        "--cfg-options model.backbone.depth: model.backbone takes no argument 'depth'")
    assert cfg_option_error(unexpected, {'model.backbone.depths': 3}) is None
    assert cfg_option_error(unexpected, None) is None
    assert cfg_option_error(TypeError('unsupported operand'), {'model.depth': 3}) is None
    missing = KeyError('Bar is not in the greenmim_mm::model registry.')
    assert cfg_option_error(missing, {'model.neck.type': 'Bar'}).startswith(
        '--cfg-options model.neck.type=Bar: Bar is not in the')
    assert cfg_option_error(missing, {'model.neck.type': 'Ba'}) is None
    assert cfg_option_error(KeyError('Bar'), {'model.neck.type': 'Bar'}) is None


def test_cfg_option_error_names_nested_keys_and_wrong_values():
    """A misspelt key above the last part (the builder names that part), a value of the wrong
    kind for the entry it replaces, a text value the error names: one line naming the option."""
    from greenmim_mm.apis.launch import MISSING, cfg_option_error
    typo = TypeError("GreenMIM.__init__() got an unexpected keyword argument 'bakbone'")
    assert cfg_option_error(typo, {'model.bakbone.arch': 'tiny'}).startswith(
        "--cfg-options model.bakbone.arch: model takes no argument 'bakbone'")
    linspace = TypeError('linspace() received an invalid combination of arguments')
    line = cfg_option_error(linspace, {'model.backbone.drop_path_rate': 'abc'},
                            {'model.backbone.drop_path_rate': 0.1})
    assert line == ("--cfg-options model.backbone.drop_path_rate='abc' (the config has 0.1): "
                    'check the value or drop the option (TypeError: linspace() received an '
                    'invalid combination of arguments)'), line
    compare = TypeError("'<' not supported between instances of 'int' and 'list'")
    assert cfg_option_error(compare, {'model.backbone.window_size': [7, 7]},
                            {'model.backbone.window_size': 7}).startswith(
        '--cfg-options model.backbone.window_size=[7, 7] (the config has 7): check the value')
    arch = AssertionError("Arch nope is not in default archs {'tiny', 'base'}")
    assert cfg_option_error(arch, {'model.backbone.arch': 'nope'},
                            {'model.backbone.arch': 'nano'}).startswith(
        "--cfg-options model.backbone.arch='nope' (the config has 'nano'): check the value or "
        "drop the option (AssertionError: Arch nope")
    # values of the entry's kind that the error does not name: not the options' error
    assert cfg_option_error(compare, {'train_cfg.max_epochs': 3, 'model.backbone.arch': 'base'},
                            {'train_cfg.max_epochs': 16, 'model.backbone.arch': 'nano'}) is None
    assert cfg_option_error(ValueError('bad'), {'lr': 1}, {'lr': 0.1}) is None
    assert cfg_option_error(ValueError('bad'), {'new.key': 'x'}, {'new.key': MISSING}) is None
    assert cfg_option_error(ValueError('a bad value'), {'model.x.y': 'bad'}) is not None
    assert cfg_option_error(ValueError('a bad value'), {'model.x.y': 'ba'}) is None
    assert cfg_option_error(ValueError('bad'), {'flag': 1}, {'flag': True}) is not None


def test_edit_distance():
    from greenmim_mm.apis.launch import edit_distance
    pairs = [('model', 'model'), ('modle', 'model'), ('mdl', 'model'), ('', 'ab'),
             ('train_cfg', 'test_cfg'), ('ab', 'ba'), ('kitten', 'sitting')]
    assert [edit_distance(a, b) for a, b in pairs] == [0, 1, 2, 2, 4, 1, 3]


def test_option_originals_refuses_keys_the_config_cannot_take():
    """mmengine's merge raises KeyError/TypeError tracebacks for these; the walk names the
    option and the fix first."""
    from mmengine.config import Config

    from greenmim_mm.apis.launch import MISSING, CfgOptionsError, option_originals
    cfg = Config(dict(pipeline=[dict(type='A'), dict(type='B')], train_cfg=dict(max_epochs=4)))
    originals = option_originals(cfg, {'pipeline.1.type': 'C', 'train_cfg.new': 1, 'x.y': 2})
    assert originals == {'pipeline.1.type': 'B', 'train_cfg.new': MISSING, 'x.y': MISSING}
    assert option_originals(cfg, {'train_cgf.x': 1, 'trian_cfg': {}, 'test_cfg.a.b': 2}) == {
        'train_cgf.x': MISSING, 'trian_cfg': MISSING, 'test_cfg.a.b': MISSING}
    for key, needle in [('trian_cfg.max_epochs.x', "the config has no 'trian_cfg' (did you mean "
                         "'train_cfg'?)"),
                        ('pipeline.2.type', 'pipeline is a list of 2 entries; name one by its '
                         'index (0 to 1)'),
                        ('pipeline.first.type', 'pipeline is a list of 2 entries'),
                        ('train_cfg.max_epochs.x', "train_cfg.max_epochs is 4, not a dict or "
                         "list, so it has no 'x'")]:
        with pytest.raises(CfgOptionsError) as info:
            option_originals(cfg, {key: 1})
        assert str(info.value).startswith(f'--cfg-options {key}: {needle}'), str(info.value)


def test_train_nested_typo_list_index_and_wrong_value_are_one_line(tmp_path):
    """Seen as tracebacks before: a typo above the last key part, a list index past the end
    (mmengine's merge), a text value for a float."""
    for number, (option, prefix, needle) in enumerate([
            ('model.bakbone.arch=tiny', 'train: error: --cfg-options model.bakbone.arch: model '
             "takes no argument 'bakbone'", 'unexpected keyword argument'),
            ('modle.backbone.arch=tiny', 'train: error: --cfg-options modle.backbone.arch: the '
             "config has no 'modle' (did you mean 'model'?)", 'spelling'),
            ('train_dataloader.dataset.pipeline.9.type=Foo', 'train: error: --cfg-options '
             'train_dataloader.dataset.pipeline.9.type: train_dataloader.dataset.pipeline is a '
             'list of 4 entries', 'index (0 to 3)'),
            ('model.backbone.drop_path_rate=abc', "train: error: --cfg-options "
             "model.backbone.drop_path_rate='abc' (the config has 0.0): check the value",
             'TypeError: linspace')]):
        run = run_tool('train.py', str(DEMO_PT), '--work-dir', str(tmp_path / f'w{number}'),
                       '--cfg-options', option, cwd=tmp_path)
        assert_one_line_error(run, prefix, needle)


def test_train_missing_config_is_one_line(tmp_path):
    run = run_tool('train.py', 'no_such_config.py', cwd=tmp_path)
    assert_one_line_error(run, 'train: error: config file not found', 'no_such_config.py',
                          'mim train greenmim_mm NAME')


def test_train_missing_data_is_one_line(tmp_path):
    run = run_tool('train.py', str(DEMO_PT), '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                   f'train_dataloader.dataset.data_root={tmp_path}/nothing/', cwd=tmp_path)
    assert_one_line_error(run, 'train: error:', f'{tmp_path}/nothing', 'data_root')


@pytest.fixture(scope='module')
def tiny_demo(demo_data_factory):
    out = Path(demo_data_factory('cli', 2, 1))
    wrong = out.parent / 'wrong_size.pth'
    torch.save({'state_dict': {'backbone.patch_embed.projection.weight': torch.zeros(8, 3, 4, 4)}},
               wrong)
    return out, wrong


def finetune_args(tmp_path, data):
    roots = [f'{k}.dataset.data_root={data}/' for k in
             ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    return [str(DEMO_FT), '--work-dir', str(tmp_path / 'w'), '--cfg-options',
            'train_cfg.max_epochs=1'] + roots


def test_train_missing_pretrained_checkpoint_is_one_line(tmp_path, tiny_demo):
    data, _ = tiny_demo
    run = run_tool('train.py', *finetune_args(tmp_path, data),
                   f'model.backbone.init_cfg.checkpoint={tmp_path}/absent.pth', cwd=tmp_path)
    assert_one_line_error(run, 'train: error:', f'{tmp_path}/absent.pth', 'init_cfg.checkpoint')


def test_train_wrong_size_weights_is_one_line(tmp_path, tiny_demo):
    data, wrong = tiny_demo
    run = run_tool('train.py', *finetune_args(tmp_path, data),
                   f'model.backbone.init_cfg.checkpoint={wrong}', cwd=tmp_path)
    assert_one_line_error(run, 'train: error: pretrained weights', str(wrong), 'mis-shaped',
                          'Check that the checkpoint')


def test_test_missing_checkpoint_is_one_line(tmp_path):
    run = run_tool('test.py', str(DEMO_FT), str(tmp_path / 'absent.pth'), cwd=tmp_path)
    assert_one_line_error(run, 'test: error: checkpoint not found', 'absent.pth')


def test_visualize_reconstruction_user_errors_are_one_line(tmp_path, tiny_demo):
    data, wrong = tiny_demo
    run = run_tool('visualize_reconstruction.py', 'absent.py', str(wrong), cwd=tmp_path)
    assert_one_line_error(run, 'visualize_reconstruction: error: config file not found', 'absent.py')
    run = run_tool('visualize_reconstruction.py', str(DEMO_PT), 'absent.pth', cwd=tmp_path)
    assert_one_line_error(run, 'visualize_reconstruction: error: checkpoint not found', 'absent.pth')
    run = run_tool('visualize_reconstruction.py', str(DEMO_PT), str(wrong), '--data-root', str(data),
                   cwd=tmp_path)
    assert_one_line_error(run, 'visualize_reconstruction: error:', str(wrong), 'does not fit',
                          'pass the config the checkpoint was trained with')


def test_convert_missing_input_is_one_line(tmp_path):
    run = run_tool('convert_checkpoint.py', '--src', 'greenmim_mm', 'absent.pth', 'out.pth',
                   cwd=tmp_path)
    assert_one_line_error(run, 'convert_checkpoint: error: input checkpoint not found', 'absent.pth')

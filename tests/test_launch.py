"""greenmim_mm.apis.launch (tools/train.py, tools/test.py): what ``--resume`` does, said clearly.

Issue 10 point 7: ``--resume`` with an empty or mistyped work dir used to log "Auto resumed from
the latest checkpoint None." and train from scratch; a mistyped checkpoint path failed late.
"""
import glob
import os.path as osp

import pytest

from greenmim_mm.apis import launch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CFG = osp.join(ROOT, 'configs', 'pretrain', 'greenmim_swin-nano_demo_128px.py')


def train_argv(work_dir, *extra):
    return [DEMO_CFG, '--work-dir', str(work_dir), *extra]


def test_resume_without_checkpoint_in_work_dir_starts_fresh_and_says_so(tmp_path):
    cfg, note = launch.configure_training(launch.parse_train_args(
        train_argv(tmp_path / 'empty', '--resume')))
    assert cfg.resume is False
    assert 'no checkpoint to resume from' in note
    assert 'starting fresh' in note and str(tmp_path / 'empty') in note


def test_resume_with_a_checkpoint_in_the_work_dir_is_mmengines_auto_resume(tmp_path):
    ckpt = tmp_path / 'epoch_3.pth'
    ckpt.write_bytes(b'')
    (tmp_path / 'last_checkpoint').write_text(str(ckpt))
    cfg, note = launch.configure_training(launch.parse_train_args(train_argv(tmp_path, '--resume')))
    assert (cfg.resume, cfg.load_from, note) == (True, None, None)  # mmengine logs the file


def test_resume_when_last_checkpoint_names_a_missing_file_is_an_error(tmp_path):
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'gone.pth'))
    with pytest.raises(SystemExit, match=r'last_checkpoint names a checkpoint that does not '
                       r'exist: .*gone\.pth'):
        launch.main_train(train_argv(tmp_path, '--resume'))


def test_resume_from_a_mistyped_checkpoint_is_an_error_naming_it(tmp_path):
    typo = str(tmp_path / 'epcoh_1.pth')
    with pytest.raises(SystemExit, match=r'checkpoint to resume from not found: .*epcoh_1\.pth'):
        launch.main_train(train_argv(tmp_path / 'work', '--resume', typo))
    assert not (tmp_path / 'work').exists()  # failed before the Runner made anything


def test_test_tool_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match=r'checkpoint not found: .*nope\.pth'):
        launch.main_test([DEMO_CFG, str(tmp_path / 'nope.pth')])


def test_fresh_start_is_logged_instead_of_auto_resumed_none(demo_data_factory, tmp_path):
    """One short epoch on tiny data with ``--resume`` and an empty work dir: the run log says
    that training starts fresh, never "Auto resumed from the latest checkpoint None."."""
    data = demo_data_factory('launch_data', train_per_class=1, val_per_class=1)
    work = tmp_path / 'work'
    launch.main_train(train_argv(work, '--resume', '--cfg-options', 'train_cfg.max_epochs=1',
                                 'train_dataloader.batch_size=5',
                                 f'train_dataloader.dataset.data_root={data}/'))
    [log] = glob.glob(str(work / '*' / '*.log'))
    text = open(log).read()
    assert any('WARNING' in line and 'starting fresh' in line for line in text.splitlines())
    assert 'Auto resumed' not in text
    assert (work / 'epoch_1.pth').is_file()

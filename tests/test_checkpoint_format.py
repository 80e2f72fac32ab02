"""Issue 9.1: every checkpoint greenmim_mm writes loads with plain ``torch.load(weights_only=True)``
and no allow-list, and a resume from it restores exactly what mmengine saved."""
import os.path as osp
import pickle
from collections import OrderedDict, defaultdict

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer
from mmengine.runner import Runner

import greenmim_mm  # noqa: F401
from greenmim_mm.checkpoint.plain_format import TAG, PlainFormatError, from_plain, to_plain
from test_compat import ToyDataset, ToyModel

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def weights_only_roundtrip(obj, tmp_path):
    path = tmp_path / 'x.pth'
    torch.save(obj, path)
    return torch.load(path, weights_only=True)  # no allow-list at all


# ---------------------------------------------------------------------------- the codec
def test_plain_roundtrip_restores_every_value(tmp_path):
    buffer = HistoryBuffer([0.5, 0.25, 0.125], [1, 2, 1], max_length=7)
    state = OrderedDict(w=torch.arange(3.))
    state._metadata = OrderedDict({'': {'version': 1}})
    obj = {
        'hub': OrderedDict(loss=buffer),
        'scalars': [np.float64(0.1), np.float32(1.5), np.int64(-3), np.bool_(True),
                    np.uint8(200)],
        'arrays': (np.arange(6, dtype=np.int32).reshape(2, 3), np.array(['ab', 'c']),
                   np.array(2.5), np.array([1, 2], dtype='>i4')),
        'dtype': np.dtype('float16'),
        'state_dict': state,
        'plain': {1: None, 'b': b'\x00', 's': {3, 4}, 'c': 1 + 2j, 'size': torch.Size([2])},
        'cfg': defaultdict(int, a=1),
    }
    loaded = from_plain(weights_only_roundtrip(to_plain(obj), tmp_path))
    hub = loaded['hub']['loss']
    assert type(hub) is HistoryBuffer and hub.max_length == 7
    np.testing.assert_array_equal(hub.data[0], buffer.data[0])
    np.testing.assert_array_equal(hub.data[1], buffer.data[1])
    assert hub.data[0].dtype == buffer.data[0].dtype and hub.data[1].dtype == buffer.data[1].dtype
    for got, want in zip(loaded['scalars'], obj['scalars']):
        assert type(got) is type(want) and got == want
    for got, want in zip(loaded['arrays'], obj['arrays']):
        assert type(got) is np.ndarray and got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert loaded['dtype'] == np.dtype('float16')
    assert type(loaded['state_dict']) is OrderedDict
    assert loaded['state_dict']._metadata == {'': {'version': 1}}
    assert torch.equal(loaded['state_dict']['w'], state['w'])
    assert loaded['plain'] == obj['plain'] and loaded['cfg'] == {'a': 1}


def test_plain_form_is_tensors_and_python_values():
    plain = to_plain({'x': np.float64(0.5), 'a': np.zeros(2, np.float32)})
    assert plain['x'] == {TAG: 'numpy_scalar', 'dtype': '<f8', 'value': 0.5}
    assert plain['a'][TAG] == 'ndarray' and plain['a']['data'].dtype == torch.float32


def test_values_without_plain_form_are_named():
    class Custom:
        pass

    with pytest.raises(PlainFormatError, match=r"checkpoint\['meta'\]\['hook'\]\[1\]: a "
                       r'.*Custom cannot be stored in a weights-only checkpoint'):
        to_plain({'meta': {'hook': [1, Custom()]}})
    with pytest.raises(PlainFormatError, match='object arrays'):
        to_plain(np.array([object()]))


# ---------------------------------------------------------------------------- training
class ToyData(ToyDataset):
    """test_compat's regression data, with dataset meta holding numpy values (saved in meta)."""
    metainfo = dict(classes=('a', 'b'), mean=np.array([0.5, 0.5]), seed=np.int64(3))


def toy_runner(work_dir, max_epochs, resume, hook='SafeCheckpointHook'):
    return Runner(
        model=ToyModel(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=ToyData(), sampler=dict(type='DefaultSampler', shuffle=True),
                              batch_size=4, num_workers=0, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.05)),
        param_scheduler=dict(type='MultiStepLR', milestones=[1]),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type=hook, interval=1, max_keep_ckpts=2)),
        resume=resume, randomness=dict(seed=0), default_scope='greenmim_mm',
        # mmengine keeps one message hub per experiment name in the process: one per run here
        experiment_name=f'toy_{osp.basename(str(work_dir))}_{hook}_{max_epochs}_{resume}')


def test_training_checkpoint_is_plain_and_resumes_exactly(tmp_path):
    first = toy_runner(tmp_path, 2, False)
    first.train()
    saved_hub = first.message_hub.state_dict()
    ckpt = torch.load(tmp_path / 'epoch_2.pth', weights_only=True)  # no allow-list
    assert set(ckpt) >= {'meta', 'state_dict', 'message_hub', 'optimizer', 'param_schedulers'}
    assert ckpt['message_hub']['log_scalars']['train/loss'][TAG] == 'HistoryBuffer'
    assert ckpt['meta']['dataset_meta']['seed'][TAG] == 'numpy_scalar'

    resumed = toy_runner(tmp_path, 2, True)
    resumed.load_or_resume()  # resume from epoch_2 (last_checkpoint), nothing to train after it
    assert resumed.epoch == 2 and resumed.iter == 8
    hub = resumed.message_hub
    for key, buffer in saved_hub['log_scalars'].items():
        restored = hub.log_scalars[key]
        assert type(restored) is HistoryBuffer, key
        for got, want in zip(restored.data, buffer.data):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    assert hub.runtime_info['keep_ckpt_ids'] == [1, 2]
    own = first.optim_wrapper.state_dict()['state']
    loaded = resumed.optim_wrapper.state_dict()['state']
    for i in own:
        for name, value in own[i].items():
            assert torch.equal(loaded[i][name], value), name
    assert torch.equal(resumed.model.linear.weight, first.model.linear.weight)


def test_old_format_checkpoint_still_resumes(tmp_path):
    """A checkpoint of mmengine's own hook (the format before this fix) resumes through the safe
    loader; the run then writes the plain format."""
    toy_runner(tmp_path, 1, False, hook='CheckpointHook').train()
    with pytest.raises(pickle.UnpicklingError, match='Unsupported global'):
        torch.load(tmp_path / 'epoch_1.pth', weights_only=True)
    runner = toy_runner(tmp_path, 2, True)
    runner.train()
    assert runner.epoch == 2
    assert len(runner.message_hub.get_scalar('train/loss').data[0]) == 8  # 4 before + 4 after
    torch.load(tmp_path / 'epoch_2.pth', weights_only=True)


@pytest.mark.parametrize('config', [
    'configs/pretrain/_base_/greenmim_pretrain_in1k-224px_800e.py',
    'configs/pretrain/greenmim_swin-nano_demo_128px.py',
    'configs/finetune/greenswin-base-w7_8xb128-amp-100e_in1k-224px.py',
    'configs/finetune/greenswin-large-w14_16xb48-amp-100e_in1k-224px.py',
    'configs/finetune/greenswin-nano_demo-cls_128px.py',
    'configs/finetune/greenswin-nano_greenmim-pt_demo-cls_128px.py',
    'configs/detection/mask-rcnn_greenswin-b-p4-w7_fpn_1x_coco.py',
    'configs/detection/mask-rcnn_greenswin-b-p4-w7_fpn_layer-decay_1x_coco.py',
    'configs/detection/mask-rcnn_greenswin-b-p4-w7_fpn_ms-crop-3x_coco.py',
    'configs/detection/mask-rcnn_greenswin-nano_fpn_demo_128px.py',
])
def test_every_config_uses_the_safe_checkpoint_hook(config):
    from mmengine.registry import HOOKS, init_default_scope

    from greenmim_mm.engine import SafeCheckpointHook
    cfg = Config.fromfile(osp.join(ROOT, config))
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    hook = HOOKS.build(cfg.default_hooks.checkpoint)
    assert type(hook) is SafeCheckpointHook

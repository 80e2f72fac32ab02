"""Seeded data loading (issue 10 point 1): every random choice of loading a sample is a function of
(seed, epoch, sample index, rank), for any num_workers / persistent_workers.

References: mmengine's DefaultSampler for the order, the pipeline run by hand after seeding the
three global RNGs for the samples, a DataLoader without workers for the ones with workers.
"""
import os.path as osp
import random

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import DefaultSampler, default_collate
from mmengine.registry import init_default_scope
from torch.utils.data import DataLoader

import greenmim_mm  # noqa: F401
from greenmim_mm.datasets import (SKIPPED_KEY, CheckedCustomDataset, SeededIndex, SeededSampler,
                                  sample_seed, seeded_rngs)
from greenmim_mm.registry import DATASETS, TRANSFORMS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CFG = osp.join(ROOT, 'configs', 'pretrain', 'greenmim_swin-nano_demo_128px.py')


@pytest.fixture(scope='module')
def data(demo_data_factory):
    return demo_data_factory('seeded', train_per_class=2, val_per_class=1)


def demo_dataset(root, **kw):
    """The demo pre-training config's dataset (its shipped RandomResizedCrop + flip pipeline)."""
    cfg = Config.fromfile(DEMO_CFG).train_dataloader.dataset
    cfg.update(data_root=root, **kw)
    init_default_scope('greenmim_mm')
    return DATASETS.build(cfg)


def test_sample_seed_depends_on_every_component():
    ref = sample_seed(0, 1, 2, 3)
    assert ref == sample_seed(0, 1, 2, 3) and 0 <= ref < 2**64
    others = {sample_seed(*k) for k in [(1, 1, 2, 3), (0, 2, 2, 3), (0, 1, 3, 3), (0, 1, 2, 0)]}
    assert ref not in others and len(others) == 4


def test_seeded_rngs_seed_all_three_and_restore_them():
    torch.manual_seed(77)
    random.seed(5)
    np.random.seed(6)
    before = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.manual_seed(77)
    random.seed(5)
    np.random.seed(6)
    with seeded_rngs(123):
        inside = (random.random(), np.random.rand(), torch.rand(1).item())
    assert torch.initial_seed() == 77
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == before  # restored
    with seeded_rngs(123):
        assert (random.random(), np.random.rand(), torch.rand(1).item()) == inside
    with seeded_rngs(124):
        assert (random.random(), np.random.rand(), torch.rand(1).item()) != inside


@pytest.mark.parametrize('rank,world', [(0, 1), (1, 2)])
def test_sampler_yields_default_sampler_order_with_per_sample_seeds(monkeypatch, rank, world):
    import mmengine.dataset.sampler as sampler_module
    monkeypatch.setattr(sampler_module, 'get_dist_info', lambda: (rank, world))
    dataset = CheckedCustomDataset.__new__(CheckedCustomDataset)  # only len() is used
    monkeypatch.setattr(CheckedCustomDataset, '__len__', lambda self: 11)
    ours, ref = SeededSampler(dataset, seed=3), DefaultSampler(list(range(11)), seed=3)
    for epoch in (0, 4):
        ours.set_epoch(epoch)
        ref.set_epoch(epoch)
        items = list(ours)
        assert [i.index for i in items] == list(ref)
        assert [i.seed for i in items] == [sample_seed(3, epoch, i, rank) for i in ref]
    assert len(ours) == len(ref)


def test_sampler_refuses_a_dataset_without_seeded_indices():
    with pytest.raises(TypeError, match='SeededSampler needs a dataset'):
        SeededSampler(list(range(4)), seed=0)


def test_sample_equals_the_pipeline_run_by_hand_after_seeding(data):
    dataset = demo_dataset(data)
    pipeline = [TRANSFORMS.build(t) for t in Config.fromfile(DEMO_CFG).train_pipeline]
    for index, seed in [(0, 11), (3, 2**63 + 5), (3, 12)]:
        random.seed(seed)
        np.random.seed([seed & 0xFFFFFFFF, seed >> 32])
        torch.manual_seed(seed)
        ref = dataset.get_data_info(index)
        for t in pipeline:
            ref = t(ref)
        np.random.seed(999)  # the dataset must not depend on the global state
        got = dataset[SeededIndex(index, seed)]
        assert torch.equal(got['inputs'], ref['inputs'])
    a, b = dataset[SeededIndex(0, 1)], dataset[SeededIndex(0, 2)]
    assert not torch.equal(a['inputs'], b['inputs'])  # the crop does vary with the seed


def loader_batches(dataset, num_workers, epochs):
    kw = dict(persistent_workers=True) if num_workers else {}
    sampler = SeededSampler(dataset, seed=0)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=num_workers,
                        collate_fn=default_collate, **kw)
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out.append([b['inputs'] for b in loader])
    return out


def test_batches_do_not_depend_on_workers_or_persistence(data):
    dataset = demo_dataset(data)
    plain = loader_batches(dataset, 0, 2)
    workers = loader_batches(dataset, 2, 2)
    for a, b in zip(plain, workers):
        assert len(a) == len(b) == 3
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(plain[0][0], plain[1][0])  # epochs differ


def test_replacement_of_an_unreadable_image_is_deterministic(data, tmp_path):
    import shutil
    root = tmp_path / 'demo'
    shutil.copytree(data, root)
    bad = root / 'train' / 'circle' / 'circle_00000.png'
    bad.write_bytes(b'')
    dataset = demo_dataset(str(root))
    index = [i for i in range(len(dataset)) if dataset.get_data_info(i)['img_path'] == str(bad)]
    [index] = index
    np.random.seed(1)
    first = dataset[SeededIndex(index, 7)]
    np.random.seed(2)
    second = dataset[SeededIndex(index, 7)]
    assert torch.equal(first['inputs'], second['inputs'])
    assert first['data_samples'].metainfo[SKIPPED_KEY] == [str(bad)]
    plain_a, plain_b = dataset[index], dataset[index]  # int indices: same replacement too
    assert plain_a['data_samples'].metainfo[SKIPPED_KEY] == [str(bad)]
    assert plain_a['data_samples'].img_path == plain_b['data_samples'].img_path != str(bad)

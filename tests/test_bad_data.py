"""Bad data found early (issue 10 point 5): unreadable images are skipped with a warning naming each
file and a count per epoch, within a bound; annotation files are validated when the dataset is
built, naming the first offending line.

References: mmcv's LoadImageFromFile for readable images, PIL's encoder for JPEG bytes.
"""
import io
import os.path as osp
import shutil

import numpy as np
import pytest
from mmcv.transforms import LoadImageFromFile
from mmengine.config import Config
from mmengine.registry import init_default_scope
from PIL import Image

import greenmim_mm  # noqa: F401
from greenmim_mm.datasets import SKIPPED_KEY, LoadImageFromFileOrSkip, SeededSampler
from greenmim_mm.datasets import loading as loading_module
from greenmim_mm.engine import TooManyBadSamplesError
from greenmim_mm.registry import DATASETS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PRETRAIN_CFG = osp.join(ROOT, 'configs', 'pretrain', 'greenmim_swin-nano_demo_128px.py')
CLS_CFG = osp.join(ROOT, 'configs', 'finetune', 'greenswin-nano_demo-cls_128px.py')


def jpeg_bytes(size=(64, 48), seed=0, **kw):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format='JPEG', quality=90, **kw)
    return buf.getvalue()


BAD_FILES = {
    'truncated.jpg': lambda: jpeg_bytes((96, 96))[:-400],  # cut inside the scan data
    'text.jpg': lambda: b'this is a text file, not an image\n',
    'empty.jpg': lambda: b'',
}


# ----------------------------------------------------------------------------- loading
@pytest.mark.parametrize('name', sorted(BAD_FILES) + ['missing.jpg'])
def test_unreadable_file_gives_none_and_a_warning_naming_it(name, tmp_path, monkeypatch):
    path = tmp_path / name
    if name in BAD_FILES:
        path.write_bytes(BAD_FILES[name]())
    logged = []
    monkeypatch.setattr(loading_module, 'print_log', lambda msg, **kw: logged.append(msg))
    assert LoadImageFromFileOrSkip()(dict(img_path=str(path))) is None
    [message] = logged
    assert message.startswith(f'Skipping unreadable image {path}: ')
    reason = message.split(': ', 1)[1]
    expected = {'empty.jpg': 'empty file (0 bytes)', 'missing.jpg': 'FileNotFoundError'}.get(
        name, 'the decoder cannot read it')
    assert reason.startswith(expected), reason


def test_jpeg_cut_anywhere_is_unreadable(tmp_path):
    """A JPEG missing only its last bytes (end-of-image marker) or half its data: OpenCV 4.11
    refuses both, so no truncated image is trained on."""
    data = jpeg_bytes((128, 96))
    for cut in (2, len(data) // 2):
        path = tmp_path / f'cut{cut}.jpg'
        path.write_bytes(data[:-cut])
        assert LoadImageFromFileOrSkip()(dict(img_path=str(path))) is None


@pytest.mark.parametrize('ext', ['jpg', 'png'])
def test_readable_images_load_exactly_as_mmcv(ext, tmp_path):
    path = tmp_path / f'a.{ext}'
    if ext == 'jpg':
        path.write_bytes(jpeg_bytes())
    else:
        Image.fromarray(np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)).save(path)
    for kw in (dict(), dict(to_float32=True)):
        ours = LoadImageFromFileOrSkip(**kw)(dict(img_path=str(path)))
        ref = LoadImageFromFile(**kw)(dict(img_path=str(path)))
        assert np.array_equal(ours['img'], ref['img']) and ours['img'].dtype == ref['img'].dtype
        assert ours['img_shape'] == ref['img_shape'] == ours['ori_shape'] == (48, 64)


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope='module')
def bad_data(demo_data_factory, tmp_path_factory):
    """20 demo images plus the three bad files in train/circle/."""
    root = tmp_path_factory.mktemp('bad') / 'demo'
    shutil.copytree(demo_data_factory('bad_src', train_per_class=4, val_per_class=1), root)
    for name, make in BAD_FILES.items():
        (root / 'train' / 'circle' / name).write_bytes(make())
    return root


def train_pretrain(work, root, max_fraction):
    from greenmim_mm.apis import launch
    launch.main_train([PRETRAIN_CFG, '--work-dir', str(work), '--cfg-options',
                'train_cfg.max_epochs=1', 'train_dataloader.batch_size=4',
                f'train_dataloader.dataset.data_root={root}',
                'default_hooks.logger.interval=1', f'custom_hooks.1.max_fraction={max_fraction}'])
    [log] = work.glob('*/*.log')
    return log.read_text()


def skips_of_epoch_0(root):
    """Reference count: the skipped-sample records of every sample the sampler hands out in
    epoch 0 (seed 0, the config's), read in this process without a DataLoader or the hook."""
    dataset = build(PRETRAIN_CFG, root)
    return sum(len(dataset[item]['data_samples'].metainfo.get(SKIPPED_KEY, []))
               for item in SeededSampler(dataset, seed=0))


def test_training_skips_bad_files_and_counts_them(bad_data, tmp_path):
    """23 files, 3 unreadable: the epoch runs (6 iterations), each bad file is named, the epoch
    end reports the count (3, or more if a replacement drew a bad file too)."""
    log = train_pretrain(tmp_path, bad_data, max_fraction=0.2)
    assert 'Epoch(train) [1][6/6]' in log
    assert (tmp_path / 'epoch_1.pth').is_file()
    for name in BAD_FILES:
        path = str(bad_data / 'train' / 'circle' / name)
        assert f'Skipped unreadable training sample {path}' in log
    count = skips_of_epoch_0(bad_data)
    assert count >= 3
    assert f'Epoch 1: skipped {count} unreadable training samples (3 files)' in log


def test_training_stops_when_too_many_files_are_bad(bad_data, tmp_path):
    with pytest.raises(TooManyBadSamplesError, match=r'more than max_fraction=0.05 of 23'):
        train_pretrain(tmp_path, bad_data, max_fraction=0.05)
    assert not list(tmp_path.glob('*.pth'))


# ----------------------------------------------------------------------------- annotations
def build(config, root, **overrides):
    cfg = Config.fromfile(config).train_dataloader.dataset
    cfg.update(data_root=str(root), **overrides)
    init_default_scope('greenmim_mm')
    return DATASETS.build(cfg)


@pytest.fixture(scope='module')
def data(demo_data_factory):
    return demo_data_factory('ann', train_per_class=2, val_per_class=1)


def test_labelled_list_given_to_the_label_free_dataset_names_line_1(data):
    with pytest.raises(ValueError, match=r'meta/train.txt, line 1 \(.*\.png 0\'\): 2 fields '
                                         r'\(a path and a label\).*label-free'):
        build(PRETRAIN_CFG, data, ann_file='meta/train.txt')


def test_a_list_of_paths_builds_the_label_free_dataset(data, tmp_path):
    lines = open(osp.join(data, 'meta', 'train.txt')).read().split('\n')
    paths = tmp_path / 'paths.txt'
    paths.write_text(''.join(line.rsplit(' ', 1)[0] + '\n' for line in lines if line))
    assert len(build(PRETRAIN_CFG, data, ann_file=str(paths))) == 10


@pytest.mark.parametrize('line,problem', [
    ('circle/nope.png 0', r'image file not found: .*circle/nope.png'),
    ('circle/circle_00000.png', r'expected "<path> <integer label>"'),
    ('circle/circle_00000.png x', r'expected "<path> <integer label>"'),
    ('circle/circle_00000.png 5', r'label 5 is outside \[0, 5\) \(5 classes\)'),
    ('circle/circle_00000.png -1', r'label -1 is outside \[0, 5\)'),
    ('', 'empty line'),
])
def test_bad_annotation_line_is_named_at_build(data, tmp_path, line, problem):
    lines = open(osp.join(data, 'meta', 'train.txt')).read().split('\n')[:10]
    ann = tmp_path / 'train.txt'
    ann.write_text('\n'.join(lines[:6] + [line] + lines[6:]) + '\n')
    with pytest.raises(ValueError, match=rf'train.txt, line 7 .*: {problem}'):
        build(CLS_CFG, data, ann_file=str(ann))


def test_unreadable_validation_image_is_one_clear_error(data, tmp_path):
    root = tmp_path / 'demo'
    shutil.copytree(data, root)
    bad = root / 'val' / 'star' / 'star_00000.png'
    bad.write_bytes(b'')
    cfg = Config.fromfile(CLS_CFG).val_dataloader.dataset
    cfg.update(data_root=str(root))
    init_default_scope('greenmim_mm')
    dataset = DATASETS.build(cfg)
    [index] = [i for i in range(len(dataset)) if dataset.get_data_info(i)['img_path'] == str(bad)]
    with pytest.raises(ValueError, match=rf'{bad}: the test pipeline returned no data'):
        dataset[index]

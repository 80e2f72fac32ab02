"""Tests for greenmim_mm.datasets.demo_data (tools/make_demo_data.py, synthetic demo data set)."""
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from greenmim_mm.datasets import demo_data as mdd

SMALL = dict(size=64, train_per_class=3, val_per_class=2, det_train=8, det_val=4, seed=0)


def make(out, **kw):
    return mdd.generate(out, **{**SMALL, **kw, 'verbose': False})


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    out, generated = make(tmp_path_factory.mktemp('gen') / 'demo')
    assert generated
    return out


def files_of(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def shoelace(poly):
    x, y = np.asarray(poly[0::2]), np.asarray(poly[1::2])
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def perimeter(poly):
    pts = np.asarray(poly).reshape(-1, 2)
    return float(np.linalg.norm(pts - np.roll(pts, -1, 0), axis=1).sum())


def morph(mask, op, k):
    m = Image.fromarray(mask.astype(np.uint8) * 255).filter(op(k))
    return np.asarray(m) > 0


def check_drawn(img, mask, area, poly):
    """Under ``mask`` (a rasterised annotation polygon) lies one flat colour covering about
    ``area`` pixels, and the pixels just around it differ from that colour."""
    per = perimeter(poly)  # rasterisers differ on boundary pixels only (PIL's adds up to ~.7 per)
    assert abs(int(mask.sum()) - area) <= per + 2
    core = morph(mask, ImageFilter.MinFilter, 3)
    core = core if core.sum() >= 4 else mask
    cols, counts = np.unique(img[core], axis=0, return_counts=True)
    fill = cols[counts.argmax()]
    assert counts.max() >= 0.95 * core.sum()
    n_fill = int((img[mask] == fill).all(1).sum())
    assert abs(n_fill - area) <= 0.4 * per + 2  # the drawn shape has the annotated area
    ring = morph(mask, ImageFilter.MaxFilter, 7) & ~morph(mask, ImageFilter.MaxFilter, 3)
    assert ring.any()
    assert np.linalg.norm(img[ring] - fill, axis=1).mean() > 30


def test_deterministic(demo, tmp_path):
    again, _ = make(tmp_path / 'again')
    a, b = files_of(demo), files_of(again)
    assert a.keys() == b.keys() and a == b
    other, _ = make(tmp_path / 'other', seed=1)
    c = files_of(other)
    assert a.keys() == c.keys()
    pngs = [k for k in a if k.suffix == '.png']
    assert sum(a[k] != c[k] for k in pngs) == len(pngs)


def test_layout_and_meta(demo):
    meta = demo / 'meta'
    assert meta.joinpath('classes.txt').read_text().splitlines() == list(mdd.CLASSES)
    for split, per_class in (('train', SMALL['train_per_class']), ('val', SMALL['val_per_class'])):
        lines = meta.joinpath(f'{split}.txt').read_text().splitlines()
        assert len(lines) == per_class * len(mdd.CLASSES)
        listed = set()
        for line in lines:
            rel, label = line.split(' ')
            path = demo / split / rel
            assert path.is_file()
            assert int(label) == mdd.CLASSES.index(path.parent.name)
            listed.add(path)
            with Image.open(path) as im:
                assert im.format == 'PNG' and im.mode == 'RGB'
                assert im.size == (SMALL['size'], SMALL['size'])
        assert listed == set((demo / split).rglob('*.png'))
    params = json.loads(meta.joinpath('params.json').read_text())
    assert params['size'] == SMALL['size'] and params['seed'] == SMALL['seed']
    assert not list(demo.parent.glob('.demo.*'))  # no temp dirs left behind


def load_coco(demo, split):
    return json.loads((demo / 'coco' / 'annotations' / f'instances_{split}.json').read_text())


@pytest.mark.parametrize('split', ['train', 'val'])
def test_coco_annotations(demo, split):
    coco = load_coco(demo, split)
    size = SMALL['size']
    assert [c['name'] for c in coco['categories']] == list(mdd.CLASSES)
    assert [c['id'] for c in coco['categories']] == list(range(1, len(mdd.CLASSES) + 1))
    images = {im['id']: im for im in coco['images']}
    assert len(images) == len(coco['images']) == SMALL[f'det_{split}']
    for im in images.values():
        assert (im['width'], im['height']) == (size, size)
        assert (demo / 'coco' / split / im['file_name']).is_file()
    assert len({a['id'] for a in coco['annotations']}) == len(coco['annotations'])
    per_image = {i: [] for i in images}
    for ann in coco['annotations']:
        assert ann['image_id'] in images and ann['iscrowd'] == 0
        assert 1 <= ann['category_id'] <= len(mdd.CLASSES)
        (poly,) = ann['segmentation']
        xs, ys = np.asarray(poly[0::2]), np.asarray(poly[1::2])
        x, y, w, h = ann['bbox']
        assert all(isinstance(v, float) for v in ann['bbox'])
        assert 0 <= x and 0 <= y and x + w <= size and y + h <= size and w > 1 and h > 1
        assert [x, y, x + w, y + h] == pytest.approx([xs.min(), ys.min(), xs.max(), ys.max()],
                                                     abs=0.011)
        assert ann['area'] > 0 and ann['area'] == pytest.approx(shoelace(poly), abs=0.01)
        per_image[ann['image_id']].append(ann)
    assert all(1 <= len(anns) <= 3 for anns in per_image.values())


@pytest.mark.parametrize('split', ['train', 'val'])
def test_shapes_drawn_where_annotated(demo, split):
    """Rasterise the polygons independently (PIL) and check the image pixels under them."""
    coco = load_coco(demo, split)
    for im in coco['images']:
        img = np.asarray(Image.open(demo / 'coco' / split / im['file_name']), np.float64)
        union = np.zeros(img.shape[:2], int)
        for ann in (a for a in coco['annotations'] if a['image_id'] == im['id']):
            m = Image.new('L', (im['width'], im['height']))
            ImageDraw.Draw(m).polygon(ann['segmentation'][0], fill=1)
            mask = np.asarray(m).astype(bool)
            check_drawn(img, mask, ann['area'], ann['segmentation'][0])
            union += mask
        assert union.max() <= 1  # shapes do not overlap


def test_detection_shapes_never_overlap():
    n_shapes = []
    for i in range(60):
        _, shapes = mdd.detection_image(0, 2, i, 64)
        union = sum(mdd.rasterize(pts, 64).astype(int) for _, pts in shapes)
        assert union.max() <= 1
        n_shapes.append(len(shapes))
    assert set(n_shapes) == {1, 2, 3}


def test_pycocotools_masks(demo):
    pytest.importorskip('pycocotools')
    from pycocotools.coco import COCO
    ann_file = demo / 'coco' / 'annotations' / 'instances_train.json'
    coco = COCO(str(ann_file))
    assert sorted(coco.getCatIds()) == list(range(1, len(mdd.CLASSES) + 1))
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        img = np.asarray(Image.open(demo / 'coco' / 'train' / info['file_name']), np.float64)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
            mask = coco.annToMask(ann).astype(bool)
            check_drawn(img, mask, ann['area'], ann['segmentation'][0])


def test_idempotent_and_force(tmp_path, capsys):
    out, generated = make(tmp_path / 'd')
    assert generated
    marker = out / 'meta' / 'params.json'
    before = marker.stat().st_mtime_ns
    assert make(out) == (out, False)
    assert marker.stat().st_mtime_ns == before
    assert mdd.main(['--out', str(out), '--size', '64', '--train-per-class', '3',
                     '--val-per-class', '2', '--det-train', '8', '--det-val', '4']) == 0
    assert 'nothing to do' in capsys.readouterr().out
    with pytest.raises(FileExistsError, match='other parameters'):
        make(out, seed=5)
    assert make(out, seed=5, force=True) == (out, True)
    assert json.loads(marker.read_text())['seed'] == 5
    assert make(out, force=True)[1]  # force regenerates even with the same parameters


def test_incomplete_output_not_mistaken_for_complete(tmp_path, monkeypatch):
    partial = tmp_path / 'partial'
    (partial / 'train').mkdir(parents=True)  # e.g. left by something else: no params.json
    with pytest.raises(FileExistsError, match='no complete dataset'):
        make(partial)
    with pytest.raises(FileExistsError):
        make(partial, force=True)  # never deletes what the tool did not make
    assert (partial / 'train').is_dir()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mdd, 'write_detection_split', boom)
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path / 'interrupted')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['partial']


@pytest.mark.parametrize('kw', [dict(size=100), dict(size=32), dict(size=0), dict(size=96.0),
                                dict(train_per_class=0), dict(val_per_class=-1),
                                dict(det_train=0), dict(det_val=0), dict(seed=-1)])
def test_bad_parameters(tmp_path, kw):
    with pytest.raises(ValueError):
        make(tmp_path / 'x', **kw)
    assert not (tmp_path / 'x').exists()


@pytest.mark.parametrize('argv', [['--size', '100'], ['--size', '32'], ['--size', 'big'],
                                  ['--train-per-class', '0'], ['--det-val', '-3'],
                                  ['--seed', '-1']])
def test_cli_errors(tmp_path, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        mdd.main(['--out', str(tmp_path / 'x')] + argv)
    assert exc.value.code == 2
    assert 'error' in capsys.readouterr().err
    assert not (tmp_path / 'x').exists()


def test_cli_refuses_foreign_output(tmp_path):
    (tmp_path / 'x' / 'stuff').mkdir(parents=True)
    with pytest.raises(SystemExit, match='no complete dataset'):
        mdd.main(['--out', str(tmp_path / 'x'), '--size', '64', '--force'])


# --------------------------------------------------------------- interrupted writers (issue 10.7)
def hidden_siblings(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith('.'))


def start_writer(out):
    """A forked process generating a large enough data set at ``out``; returns it once its
    temporary directory exists."""
    import multiprocessing
    import time
    proc = multiprocessing.get_context('fork').Process(
        target=mdd.generate, args=(str(out),),
        kwargs=dict(size=64, train_per_class=2000, val_per_class=1, det_train=1, det_val=1,
                    verbose=False))
    proc.start()
    deadline = time.time() + 60
    while not hidden_siblings(out.parent):
        assert proc.is_alive() and time.time() < deadline, 'writer never created its temp dir'
        time.sleep(0.02)
    return proc


@pytest.mark.parametrize('sig', ['SIGTERM', 'SIGINT'])
def test_terminated_writer_removes_its_temporary_directory(tmp_path, sig):
    import signal
    proc = start_writer(tmp_path / 'demo')
    os.kill(proc.pid, getattr(signal, sig))
    proc.join(30)
    assert proc.exitcode not in (None, 0)
    assert hidden_siblings(tmp_path) == [] and not (tmp_path / 'demo').exists()


def test_next_run_removes_what_a_killed_writer_left(tmp_path):
    import signal
    proc = start_writer(tmp_path / 'demo')
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    [left] = hidden_siblings(tmp_path)
    assert left == f'.demo.tmp-{socket.gethostname()}-{proc.pid}'
    unrelated = tmp_path / f'.demo.tmp-{socket.gethostname()}-{proc.pid}x'  # not a writer's name
    other_host = tmp_path / f'.demo.tmp-elsewhere-{proc.pid}'  # its writer may be alive there
    unrelated.mkdir()
    other_host.mkdir()
    out, generated = make(tmp_path / 'demo')
    assert generated and (out / 'meta' / 'params.json').is_file()
    assert hidden_siblings(tmp_path) == sorted([unrelated.name, other_host.name])


def test_stale_scratch_of_a_live_writer_is_kept(tmp_path):
    mine = mdd.scratch_dir(tmp_path / 'demo', 'tmp')  # this (live) process's name
    mine.mkdir()
    assert mdd.remove_stale_scratch(tmp_path / 'demo') == []
    assert mine.is_dir()

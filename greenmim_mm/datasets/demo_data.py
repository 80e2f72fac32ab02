"""Generate a small deterministic synthetic dataset for the greenmim_mm demos.

Command line: ``python tools/make_demo_data.py`` (or ``python -m greenmim_mm.datasets.demo_data``);
library: :func:`generate`.

Every image shows flat-coloured shapes (circle, square, triangle, star, cross) on a textured
background (smooth noise, gradient, stripes or checkerboard; some with pixel noise). Nothing is
downloaded. Layout under ``--out`` (default ``data/demo``)::

    train/<class>/<class>_00000.png   val/<class>/...      one shape per image (classification,
    meta/train.txt  meta/val.txt                            pre-training); mmpretrain annotation
    meta/classes.txt                                        files: "<class>/<name>.png <label>"
    coco/train/000001.png  coco/val/...                     1-3 non-overlapping shapes per image
    coco/annotations/instances_{train,val}.json             COCO instances, polygon masks
    ade/images/{training,validation}/000001.png             the detection images again, with
    ade/annotations/{training,validation}/000001.png        per-pixel class masks (uint8, PNG),
                                                            mmseg's ADE20K layout and labels
    meta/params.json                                        written last: completion marker

Segmentation masks follow ADE20K's convention (mmseg's ``ADE20KDataset``, ``reduce_zero_label``):
0 = unlabelled (unused here), 1 = background, 2 + k = ``CLASSES[k]``; after mmseg's label
reduction the classes are :data:`SEG_CLASSES` (0 = background). Each mask is rasterised from the
same polygons as the image and its COCO annotation, so it matches the pixels exactly.

The same parameters and ``--seed`` give byte-identical files (each image has its own
``numpy.random.default_rng([seed, split, ...])``). Each shape is rasterised from exactly the
polygon stored in its annotation (pixel (x, y) is filled when its centre (x + .5, y + .5) lies
inside), so the masks match the pixels. The dataset is built in a temporary sibling directory
(``.<name>.tmp-<host>-<pid>``) and renamed into place, so an interrupted run never looks
complete. An interrupted run removes its temporary directory at once (SIGINT, and SIGTERM while
:func:`generate` runs in the main thread); one killed outright (SIGKILL, power loss) leaves it
behind until the next run for the same output, which removes the temporary directories of
writers on this host that no longer exist (:func:`remove_stale_scratch`).
"""
import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ('circle', 'square', 'triangle', 'star', 'cross')
SEG_CLASSES = ('background',) + CLASSES  # mmseg's labels after reduce_zero_label
FORMAT_VERSION = 2  # 2: the ADE20K-style segmentation view (ade/)
SEG_SPLITS = {'train': 'training', 'val': 'validation'}  # ADE20K's split folder names
CLS_SPLITS = {'train': 0, 'val': 1}  # split ids used in the per-image seeds
DET_SPLITS = {'train': 2, 'val': 3}
CLS_RADIUS = (0.22, 0.42)  # circumradius range of classification shapes, fraction of size
DET_RADIUS = (0.10, 0.24)  # same for detection shapes
MIN_GAP = 3.0  # px between the circumcircles of detection shapes


# ----------------------------------------------------------------------------- shapes
def unit_polygon(name):
    """Vertices (N, 2) of shape ``name`` centred at 0 with circumradius 1."""
    if name == 'circle':
        t = np.arange(64) * (2 * np.pi / 64)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if name in ('square', 'triangle'):
        n = 4 if name == 'square' else 3
        t = np.arange(n) * (2 * np.pi / n) - np.pi / 2
        return np.stack([np.cos(t), np.sin(t)], 1)
    if name == 'star':
        t = np.arange(10) * (np.pi / 5) - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if name == 'cross':
        w = 0.3
        a = np.sqrt(1 - w * w)  # arm length, so the arm corners lie on the unit circle
        return np.array([(w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a),
                         (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w), (-w, -a)])
    raise ValueError(f'unknown shape {name!r}')


def place_polygon(name, cx, cy, radius, angle):
    """Polygon of shape ``name`` rotated by ``angle``, scaled and centred, rounded to 0.01 px."""
    c, s = np.cos(angle), np.sin(angle)
    pts = unit_polygon(name) @ np.array([[c, s], [-s, c]]) * radius + (cx, cy)
    return np.round(pts, 2)


def polygon_area(pts):
    """Shoelace area of a simple polygon (N, 2)."""
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def rasterize(pts, size):
    """Boolean (size, size) mask of the pixels whose centres lie inside polygon ``pts``."""
    mask = np.zeros((size, size), bool)
    x0, y0 = np.floor(pts.min(0)).astype(int).clip(0, size)
    x1, y1 = np.ceil(pts.max(0)).astype(int).clip(0, size)
    xs = np.arange(x0, x1) + 0.5
    ys = (np.arange(y0, y1) + 0.5)[:, None, None]
    ax, ay = pts[:, 0], pts[:, 1]
    bx, by = np.roll(ax, -1), np.roll(ay, -1)
    crosses = (ay > ys) != (by > ys)  # (h, 1, E): edge spans this row
    dy = np.where(by == ay, 1.0, by - ay)
    x_hit = ax + (ys - ay) * (bx - ax) / dy  # (h, 1, E)
    inside = (crosses & (xs[None, :, None] < x_hit)).sum(-1) % 2 == 1  # even-odd rule
    mask[y0:y1, x0:x1] = inside
    return mask


# ------------------------------------------------------------------------ backgrounds
def random_colour(rng):
    return rng.integers(0, 256, 3).astype(np.float32)


def background(rng, size):
    """Float (size, size, 3) textured background: noise, gradient, stripes or checker."""
    kind = rng.integers(4)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    c1, c2 = random_colour(rng), random_colour(rng)
    if kind == 0:  # smooth low-frequency colour noise
        cells = int(rng.integers(2, 7))
        grid = rng.integers(0, 256, (cells, cells, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), np.float32)
    else:
        if kind == 1:  # linear gradient
            t = (u - u.min()) / (u.max() - u.min())
        elif kind == 2:  # stripes, soft or hard
            period = rng.uniform(6, 24)
            t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
            if rng.random() < 0.5:
                t = (t > 0.5).astype(np.float32)
        else:  # (rotated) checkerboard
            cell = rng.uniform(8, 24)
            t = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
        img = c1 + t[..., None] * (c2 - c1)
    if rng.random() < 0.3:  # pixel noise on some images only: it makes PNGs ~3x larger
        img = img + rng.normal(0, rng.uniform(1, 4), (size, size, 3))
    return np.clip(img, 0, 255).astype(np.float32)


def contrasting_colour(rng, region, candidates=16):
    """The candidate colour whose 5th-percentile RGB distance to ``region`` (K, 3) is largest."""
    cols = rng.integers(0, 256, (candidates, 3)).astype(np.float32)
    region = region[::max(1, len(region) // 512)]
    dist = np.linalg.norm(region[None] - cols[:, None], axis=-1)  # (C, K)
    return cols[int(np.argmax(np.percentile(dist, 5, axis=1)))].astype(np.uint8)


def draw(img, pts, rng):
    """Fill polygon ``pts`` into ``img`` (float HxWx3) with a colour contrasting with it."""
    mask = rasterize(pts, img.shape[0])
    img[mask] = contrasting_colour(rng, img[mask])


def save_png(img, path):
    Image.fromarray(np.asarray(img, np.uint8), 'RGB').save(path, format='PNG', compress_level=6)


# ------------------------------------------------------------------------ image makers
def random_shape(rng, name, size, radius_range):
    """Random placement (polygon) of shape ``name`` lying fully inside the image."""
    radius = rng.uniform(*radius_range) * size
    angle = rng.uniform(0, 2 * np.pi)
    ext = unit_polygon(name) @ np.array([[np.cos(angle), np.sin(angle)],
                                         [-np.sin(angle), np.cos(angle)]]) * radius
    lo, hi = 1 - ext.min(0), size - 1 - ext.max(0)
    cx, cy = rng.uniform(lo, hi)
    return place_polygon(name, cx, cy, radius, angle), (cx, cy, radius)


def classification_image(seed, split_id, label, index, size):
    """uint8 image with exactly one shape of class ``label``."""
    rng = np.random.default_rng([seed, split_id, label, index])
    img = background(rng, size)
    pts, _ = random_shape(rng, CLASSES[label], size, CLS_RADIUS)
    draw(img, pts, rng)
    return img.astype(np.uint8)


def detection_image(seed, split_id, index, size, max_tries=50):
    """uint8 image with 1-3 non-overlapping shapes and their [(label, polygon)] list."""
    rng = np.random.default_rng([seed, split_id, index])
    img = background(rng, size)
    shapes, circles = [], []
    for _ in range(int(rng.integers(1, 4))):
        label = int(rng.integers(len(CLASSES)))
        for _ in range(max_tries):
            pts, (cx, cy, r) = random_shape(rng, CLASSES[label], size, DET_RADIUS)
            if all(np.hypot(cx - x, cy - y) >= r + q + MIN_GAP for x, y, q in circles):
                circles.append((cx, cy, r))
                shapes.append((label, pts))
                draw(img, pts, rng)
                break
    return img.astype(np.uint8), shapes


def segmentation_mask(shapes, size):
    """uint8 (size, size) ADE20K-style label map of [(label, polygon)]: 1 = background,
    2 + label inside each polygon (the pixels :func:`draw` filled)."""
    seg = np.ones((size, size), np.uint8)
    for label, pts in shapes:
        seg[rasterize(pts, size)] = 2 + label
    return seg


def coco_annotation(pts, label, ann_id, image_id):
    """COCO instance dict for one polygon."""
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    return dict(id=ann_id, image_id=image_id, category_id=label + 1,
                bbox=[float(x0), float(y0), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
                area=round(polygon_area(pts), 2), iscrowd=0,
                segmentation=[[float(v) for v in pts.reshape(-1)]])


# ------------------------------------------------------------------------ split writers
def write_classification_split(root, split, per_class, size, seed, log):
    """Write ``root/<split>/<class>/*.png`` and ``root/meta/<split>.txt``."""
    lines = []
    for label, name in enumerate(CLASSES):
        (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rel = f'{name}/{name}_{i:05d}.png'
            save_png(classification_image(seed, CLS_SPLITS[split], label, i, size),
                     root / split / rel)
            lines.append(f'{rel} {label}\n')
        log(f'  {split}/{name}: {per_class} images')
    (root / 'meta' / f'{split}.txt').write_text(''.join(lines))
    return len(lines)


def write_detection_split(root, split, count, size, seed, log):
    """Write ``root/coco/<split>/*.png``, ``root/coco/annotations/instances_<split>.json`` and
    the segmentation view ``root/ade/{images,annotations}/<ADE20K split>/*.png``."""
    img_dir = root / 'coco' / split
    img_dir.mkdir(parents=True, exist_ok=True)
    seg_img_dir = root / 'ade' / 'images' / SEG_SPLITS[split]
    seg_ann_dir = root / 'ade' / 'annotations' / SEG_SPLITS[split]
    seg_img_dir.mkdir(parents=True, exist_ok=True)
    seg_ann_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(count):
        image_id = i + 1
        img, shapes = detection_image(seed, DET_SPLITS[split], i, size)
        file_name = f'{image_id:06d}.png'
        save_png(img, img_dir / file_name)
        save_png(img, seg_img_dir / file_name)
        Image.fromarray(segmentation_mask(shapes, size), 'L').save(
            seg_ann_dir / file_name, format='PNG', compress_level=6)
        images.append(dict(id=image_id, file_name=file_name, width=size, height=size))
        for label, pts in shapes:
            anns.append(coco_annotation(pts, label, len(anns) + 1, image_id))
    coco = dict(info=dict(description='greenmim_mm synthetic demo shapes', version='1'),
                licenses=[], images=images, annotations=anns,
                categories=[dict(id=k + 1, name=n, supercategory='shape')
                            for k, n in enumerate(CLASSES)])
    with open(root / 'coco' / 'annotations' / f'instances_{split}.json', 'w') as f:
        json.dump(coco, f, separators=(',', ':'))
    log(f'  coco/{split}, ade/images/{SEG_SPLITS[split]}: {count} images, {len(anns)} instances')
    return count, len(anns)


# ------------------------------------------------------------------------------ driver
def check_params(size, counts, seed):
    """Raise ValueError for an unusable size, count or seed."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f'seed must be a non-negative integer, got {seed!r}')
    if not isinstance(size, int) or size < 64 or size % 32:
        raise ValueError(f'size must be an integer >= 64 divisible by 32 (Swin), got {size!r}')
    for key, n in counts.items():
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f'{key} must be a positive integer, got {n!r}')


def read_params(out):
    """The parameters recorded in a complete dataset at ``out``, else None."""
    try:
        return json.loads((Path(out) / 'meta' / 'params.json').read_text())
    except (OSError, ValueError):
        return None


def majority_class_miou(ann_dir, num_classes=len(SEG_CLASSES)):
    """mIoU (%) of the class-frequency baseline on the masks in ``ann_dir`` (ADE20K labels):
    predicting the most frequent class everywhere, the best constant prediction. Its IoU is
    that class's pixel share, every other class scores 0; mean over ``num_classes``.
    Returns ``(miou, frequencies)``, frequencies (num_classes,) in mmseg's reduced labels."""
    counts = np.zeros(num_classes + 1, np.int64)
    for path in sorted(Path(ann_dir).glob('*.png')):
        counts += np.bincount(np.asarray(Image.open(path)).reshape(-1), minlength=num_classes + 1)
    freq = counts[1:] / counts[1:].sum()  # label 0 (unlabelled) is ignored, as mmseg does
    return 100.0 * freq.max() / num_classes, freq


def disk_usage(path):
    return sum(p.stat().st_size for p in Path(path).rglob('*') if p.is_file())


def generate(out='data/demo', size=128, train_per_class=400, val_per_class=80, det_train=600,
             det_val=120, seed=0, force=False, verbose=True):
    """Build the dataset at ``out`` (skipped if already complete with the same parameters).

    Returns ``(out_path, generated)``; ``generated`` is False when an existing complete dataset
    was kept. Raises ValueError for bad parameters, FileExistsError when ``out`` holds a
    dataset with other parameters and ``force`` is not set, or holds anything else (never
    deleted: ``force`` only replaces an empty directory or a dataset made by this tool).
    """
    counts = dict(train_per_class=train_per_class, val_per_class=val_per_class,
                  det_train=det_train, det_val=det_val)
    check_params(size, counts, seed)
    params = dict(format_version=FORMAT_VERSION, classes=list(CLASSES), size=size, seed=seed,
                  **counts)
    log = print if verbose else (lambda *a, **k: None)
    out = Path(out)
    for path in remove_stale_scratch(out):
        log(f'removed {path}, left by an interrupted run')
    existing = read_params(out)
    if existing == params and not force:
        log(f'{out}: complete demo dataset with these parameters already present, nothing to do')
        return out, False
    if existing is None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f'{out} exists but holds no complete dataset made by this tool '
                              '(no meta/params.json); delete it or choose another output dir')
    if existing is not None and not force:
        raise FileExistsError(f'{out} holds a demo dataset with other parameters ({existing}); '
                              'pass --force (force=True) to regenerate it')

    start = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch_dir(out, 'tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    with sigterm_raises(), cleaned_up(tmp):
        (tmp / 'meta').mkdir(parents=True)
        (tmp / 'coco' / 'annotations').mkdir(parents=True)
        (tmp / 'meta' / 'classes.txt').write_text(''.join(f'{c}\n' for c in CLASSES))
        log(f'generating {size}x{size} demo data (seed {seed}) into {out}')
        n_train = write_classification_split(tmp, 'train', train_per_class, size, seed, log)
        n_val = write_classification_split(tmp, 'val', val_per_class, size, seed, log)
        n_dtrain, a_train = write_detection_split(tmp, 'train', det_train, size, seed, log)
        n_dval, a_val = write_detection_split(tmp, 'val', det_val, size, seed, log)
        (tmp / 'meta' / 'params.json').write_text(json.dumps(params, indent=1) + '\n')  # last
        install(tmp, out)
    log(f'done in {time.time() - start:.1f}s: classification {n_train} train / {n_val} val, '
        f'detection {n_dtrain} train ({a_train} instances) / {n_dval} val ({a_val} instances), '
        f'{disk_usage(out) / 2**20:.1f} MiB in {out}')
    return out, True


def install(tmp, out):
    """Move the finished dataset ``tmp`` to ``out``, replacing what is there."""
    old = scratch_dir(out, 'old')
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------- temporary directories
def scratch_dir(out: Path, kind: str) -> Path:
    """This process's hidden sibling of ``out``: ``.<name>.<kind>-<host>-<pid>``."""
    return out.parent / f'.{out.name}.{kind}-{socket.gethostname()}-{os.getpid()}'


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_scratch(out) -> list:
    """Remove the temporary siblings of ``out`` (``.<name>.{tmp,old}-<host>-<pid>``) whose
    writer ran on this host and no longer exists; return their paths. Directories of live
    writers and of other hosts are kept."""
    out = Path(out)
    pattern = re.compile(re.escape(f'.{out.name}.') + r'(?:tmp|old)-(.+)-(\d+)')
    host = socket.gethostname()
    removed = []
    if not out.parent.is_dir():
        return removed
    for path in sorted(out.parent.iterdir()):
        found = pattern.fullmatch(path.name)
        if found and found.group(1) == host and not _process_exists(int(found.group(2))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def cleaned_up(path: Path):
    """Remove ``path`` when the block ends, however it ends (exceptions, SIGINT, SIGTERM)."""
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def sigterm_raises():
    """Within the block SIGTERM raises ``SystemExit(143)`` (main thread only), so ``finally``
    clauses run, as they do for SIGINT's KeyboardInterrupt; the previous handler is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


# ------------------------------------------------------------------------------ command line
def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {text}')
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be a non-negative integer, got {text}')
    return value


def image_size(text):
    value = int(text)
    if value < 64 or value % 32:
        raise argparse.ArgumentTypeError(f'must be >= 64 and divisible by 32 (Swin), got {text}')
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog='make_demo_data', description=__doc__.split('\n')[0])
    p.add_argument('--out', default='data/demo', help='output directory (default data/demo)')
    p.add_argument('--size', type=image_size, default=128, help='image side in px (default 128)')
    p.add_argument('--train-per-class', type=positive_int, default=400)
    p.add_argument('--val-per-class', type=positive_int, default=80)
    p.add_argument('--det-train', type=positive_int, default=600)
    p.add_argument('--det-val', type=positive_int, default=120)
    p.add_argument('--seed', type=non_negative_int, default=0)
    p.add_argument('--force', action='store_true', help='regenerate even if already complete')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        generate(args.out, args.size, args.train_per_class, args.val_per_class, args.det_train,
                 args.det_val, args.seed, args.force)
    except (ValueError, FileExistsError) as e:
        raise SystemExit(f'make_demo_data: error: {e}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

#!/usr/bin/env python
"""Train or evaluate a detectron2 model with a greenmim_mm backbone (yacs configs).

    GREENMIM_MM_EXTRAS=detectron2 tools/env.sh python tools/train_detectron2.py \
        --config-file configs/detectron2/mask_rcnn_greenswin_nano_fpn_demo_128px.yaml \
        [--eval-only] [--resume] [--num-gpus N] [KEY VALUE ...]

detectron2's ``tools/train_net.py`` with greenmim_mm's config keys and
``greenmim_mm.detectron2.Trainer``; the demo data sets (``greenmim_demo_*``) are registered from
``--demo-root`` (default ``data/demo/coco``, made by ``tools/make_demo_data.py``).

Known failures end with one line ``train_detectron2: error: ...`` and exit status 1: a missing or
invalid config file or ``KEY VALUE`` override, missing demo data or ``MODEL.WEIGHTS`` file, a
refused checkpoint.
"""
import importlib.util
import os.path as osp
import sys

from _light import load

PROG = 'train_detectron2'


def import_error_line(err) -> str:
    return (f'{PROG}: error: detectron2 is not importable ({err}); install the extra '
            '(GREENMIM_MM_EXTRAS=detectron2 tools/env.sh ..., see docs/detectron2.md)')


def setup(args):
    from greenmim_mm.detectron2 import get_cfg, register_demo_coco
    cfg = get_cfg()
    try:  # yacs and detectron2 report config errors by assert (missing file, unknown key)
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    except (AssertionError, KeyError, ValueError) as err:
        raise SystemExit(f'{PROG}: error: {args.config_file}: {err}') from None
    cfg.freeze()
    if any(name.startswith('greenmim_demo') for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST):
        try:
            register_demo_coco(args.demo_root)
        except FileNotFoundError as err:
            raise SystemExit(f'{PROG}: error: {err}') from None
    from detectron2.engine import default_setup
    default_setup(cfg, args)
    # greenmim_mm's messages (e.g. which per-stage norms a converted checkpoint lacks) go to the
    # console and OUTPUT_DIR/log.txt too, as detectron2's and fvcore's
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name='greenmim_mm')
    return cfg


def check_weights_exist(cfg, resume: bool) -> None:
    """``MODEL.WEIGHTS`` names an existing file (URLs and detectron2's ``catalog://`` left to
    detectron2), unless ``--resume`` finds a checkpoint of this run in ``OUTPUT_DIR``.

    Raises:
        FileNotFoundError: naming the file (fvcore would fail with a bare assertion).
    """
    path = cfg.MODEL.WEIGHTS
    if not path or '://' in path or osp.isfile(path):
        return
    if resume and osp.isfile(osp.join(cfg.OUTPUT_DIR, 'last_checkpoint')):
        return
    raise FileNotFoundError(f'MODEL.WEIGHTS not found: {path}')


def main(args):
    from greenmim_mm.detectron2 import GreenDetectionCheckpointer, Trainer
    cfg = setup(args)
    check_weights_exist(cfg, args.resume)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        GreenDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run(args):
    """:func:`main` with the known failures as one error line (``SystemExit``)."""
    from greenmim_mm.checkpoint.loading import CheckpointLoadError
    try:
        return main(args)
    except (CheckpointLoadError, FileNotFoundError) as err:
        raise SystemExit(f'{PROG}: error: {err}') from None


def parse_args(argv=None):
    """detectron2's ``default_argument_parser()`` options and ``--demo-root``, parsed with the
    standard library (``greenmim_mm/apis/cli_args.py``): ``--help`` without importing torch."""
    return load('apis/cli_args').parse_detectron2_train_args(argv)


if __name__ == '__main__':
    if importlib.util.find_spec('detectron2') is None:  # also for --help: one line
        sys.exit(import_error_line('No module named detectron2'))
    args = parse_args()
    try:
        from detectron2.engine import launch
    except ImportError as err:  # installed but broken
        sys.exit(import_error_line(err))
    launch(run, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args, ))

#!/usr/bin/env python
"""Train or evaluate a detectron2 model with a greenmim_mm backbone (yacs configs).

    GREENMIM_MM_EXTRAS=detectron2 tools/env.sh python tools/train_detectron2.py \
        --config-file configs/detectron2/mask_rcnn_greenswin_nano_fpn_demo_128px.yaml \
        [--eval-only] [--resume] [--num-gpus N] [KEY VALUE ...]

detectron2's ``tools/train_net.py`` with greenmim_mm's config keys and
``greenmim_mm.detectron2.Trainer``; the demo data sets (``greenmim_demo_*``) are registered from
``--demo-root`` (default ``data/demo/coco``, made by ``tools/make_demo_data.py``).
"""
import sys

try:
    from detectron2.engine import default_argument_parser, default_setup, launch
except ImportError as err:  # also for --help: one line, no traceback
    sys.exit(f'train_detectron2: error: detectron2 is not importable ({err}); install the '
             'extra (GREENMIM_MM_EXTRAS=detectron2 tools/env.sh ..., see docs/detectron2.md)')


def setup(args):
    from greenmim_mm.detectron2 import get_cfg, register_demo_coco
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    if any(name.startswith('greenmim_demo') for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST):
        register_demo_coco(args.demo_root)
    default_setup(cfg, args)
    # greenmim_mm's messages (e.g. which per-stage norms a converted checkpoint lacks) go to the
    # console and OUTPUT_DIR/log.txt too, as detectron2's and fvcore's
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name='greenmim_mm')
    return cfg


def main(args):
    from greenmim_mm.detectron2 import GreenDetectionCheckpointer, Trainer
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        GreenDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parse_args(argv=None):
    parser = default_argument_parser()
    parser.add_argument('--demo-root', default='data/demo/coco',
                        help='COCO folder of the demo data (default data/demo/coco)')
    return parser.parse_args(argv)


if __name__ == '__main__':
    args = parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args, ))

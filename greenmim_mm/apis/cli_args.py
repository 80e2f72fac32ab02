"""Command-line options of the tools, with the standard library only.

``import greenmim_mm`` imports torch and the OpenMMLab stack (10-40 s on a loaded CPU machine).
The tools load this one file on its own (``tools/_light.py``) to answer ``--help`` and refuse bad
arguments before that import; the package uses the same functions (``greenmim_mm.apis.launch``,
``greenmim_mm.apis.visualization``), so both parse alike. Nothing here may import outside the standard
library.
"""
import argparse
import os
from typing import Optional, Sequence


class LazyDictAction(argparse.Action):
    """mmengine's ``DictAction`` (``--cfg-options a.b=1 c=[1,2]``), imported only when the option
    is given, so parsers build without mmengine. An item that is not ``KEY=VALUE`` is an argparse
    error (one usage line), not mmengine's ValueError traceback."""

    def __call__(self, parser, namespace, values, option_string=None):
        for item in values:
            key = item.split('=', 1)[0]
            if '=' not in item or not key:
                parser.error(f'{option_string}: {item!r} is not KEY=VALUE '
                             '(e.g. train_cfg.max_epochs=2 or model.backbone.drop_path_rate=0.2)')
        from mmengine.config import DictAction
        DictAction(self.option_strings, self.dest, nargs=self.nargs)(
            parser, namespace, values, option_string)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}')
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be at least 1, got {value}')
    return value


# ------------------------------------------------------------------------------ train / test
def add_common_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options train and test share: config overrides, launcher, local rank (mim and
    ``torch.distributed.launch`` pass ``--local-rank``)."""
    parser.add_argument('--cfg-options', nargs='+', action=LazyDictAction,
                        help='override config entries, e.g. train_cfg.max_epochs=2')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def parse_common(parser: argparse.ArgumentParser,
                 argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Add the common options, parse, and export ``LOCAL_RANK`` (unless already set)."""
    args = add_common_options(parser).parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def parse_train_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='train.py',
                                     description='Train a model with an mmengine config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from the given checkpoint, or from the latest one in the '
                        'work dir when no path is given')
    parser.add_argument('--resume-schedule', choices=['checkpoint', 'config'], default=None,
                        help='--resume with a parameter schedule that differs from the '
                        "checkpoint's: keep the checkpoint's (default, with a warning) or take "
                        "the config's (the lrs of an uninterrupted run with it)")
    parser.add_argument('--amp', action='store_true', help='mixed-precision training')
    parser.add_argument('--no-validate', action='store_true', help='skip validation')
    parser.add_argument('--partial-load', action='store_true',
                        help='load_from / --resume: load the weights that fit and log the '
                        'missing, unexpected and mis-shaped ones (default: refuse the checkpoint)')
    return parse_common(parser, argv)


def parse_test_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='test.py', description='Test (evaluate) a checkpoint')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where the evaluation logs go')
    return parse_common(parser, argv)


# ------------------------------------------------------------------------------ pictures
def add_picture_arguments(parser: argparse.ArgumentParser, algorithm: str, out: str,
                          num: int) -> argparse.ArgumentParser:
    """The options every reconstruction picture tool takes (config, checkpoint, --out, --num,
    --data-root, --seed, --device); ``--num`` must be >= 1."""
    parser.add_argument('config', help=f'the {algorithm} config the checkpoint was trained with')
    parser.add_argument('checkpoint', help=f'a {algorithm} checkpoint (.pth)')
    parser.add_argument('--out', default=out, help='output PNG')
    parser.add_argument('--num', type=positive_int, default=num,
                        help='number of images (columns)')
    parser.add_argument('--data-root', help="override the dataset's data_root")
    parser.add_argument('--seed', type=int, default=0, help='seed of the mask')
    parser.add_argument('--device', default='cpu')
    return parser


def parse_reconstruction_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='visualize_reconstruction.py',
                                     description='Visualise GreenMIM reconstructions')
    return add_picture_arguments(parser, 'GreenMIM', 'reconstruction.png', 8).parse_args(argv)


def parse_localmim_picture_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='visualize_localmim.py',
                                     description='Visualise LocalMIM head predictions')
    return add_picture_arguments(parser, 'LocalMIM', 'localmim_heads.png', 4).parse_args(argv)


# ------------------------------------------------------------------------------ detectron2
def detectron2_train_parser() -> argparse.ArgumentParser:
    """``tools/train_detectron2.py``'s options: detectron2's ``default_argument_parser()``
    (detectron2/engine/defaults.py, same options, defaults and port rule; importing it imports
    torch and detectron2, 7-8 s) plus ``--demo-root``. The d2 suite checks it matches
    detectron2's (tests/extra_detectron2/test_d2_cli.py)."""
    parser = argparse.ArgumentParser(
        prog='train_detectron2.py', formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Train or evaluate a detectron2 model with a greenmim_mm backbone',
        epilog='Change config options: train_detectron2.py --config-file cfg.yaml '
        'MODEL.WEIGHTS backbone.pth SOLVER.BASE_LR 0.001')
    parser.add_argument('--config-file', default='', metavar='FILE', help='path to config file')
    parser.add_argument('--resume', action='store_true',
                        help='resume from the last checkpoint in OUTPUT_DIR '
                        '(DefaultTrainer.resume_or_load)')
    parser.add_argument('--eval-only', action='store_true', help='perform evaluation only')
    parser.add_argument('--num-gpus', type=int, default=1, help='number of gpus *per machine*')
    parser.add_argument('--num-machines', type=int, default=1, help='total number of machines')
    parser.add_argument('--machine-rank', type=int, default=0,
                        help='the rank of this machine (unique per machine)')
    port = 2 ** 15 + 2 ** 14 + hash(os.getuid() if os.name != 'nt' else 1) % 2 ** 14
    parser.add_argument('--dist-url', default=f'tcp://127.0.0.1:{port}',
                        help='initialization URL for the pytorch distributed backend')
    parser.add_argument('opts', default=None, nargs=argparse.REMAINDER,
                        help='config options at the end of the command: "PATH.KEY VALUE" pairs')
    parser.add_argument('--demo-root', default='data/demo/coco',
                        help='COCO folder of the demo data (default data/demo/coco)')
    return parser


def parse_detectron2_train_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return detectron2_train_parser().parse_args(argv)

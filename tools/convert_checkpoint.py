"""Convert a Swin or Twins-SVT checkpoint to greenmim_mm / mmpretrain / mmdet backbone weights.

    python tools/convert_checkpoint.py --src greenmim_mm work_dirs/pretrain/epoch_800.pth out.pth
    python tools/convert_checkpoint.py --src official-g1 greenmim_swin_base.pth out.pth --window 7
    python tools/convert_checkpoint.py --src timm swin_tiny.pth out.pth --stage-windows 14,14,14,7
    python tools/convert_checkpoint.py --src localmim work_dirs/localmim/epoch_400.pth out.pth
    python tools/convert_checkpoint.py --src localmim-official-vit localmim_vit_base.pth out.pth
    python tools/convert_checkpoint.py --src timm-twins twins_svt_large.pth out.pth

Writes ``{'state_dict': {'backbone.<key>': tensor}}`` (weights only). Load it with
``init_cfg=dict(type='Pretrained', checkpoint=OUT, prefix='backbone.')`` (greenmim_mm,
mmpretrain) or ``convert_weights=False, init_cfg=dict(type='Pretrained', checkpoint=OUT)``
(mmdet). See ``greenmim_mm/converters/`` (one module per source layout) for the layouts and the
merge-channel orders.
"""
import argparse
import sys


def parse_windows(text: str):
    """'14,14,14,7' -> [14, 14, 14, 7]."""
    try:
        windows = [int(w) for w in text.split(',')]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}')
    if any(w < 1 for w in windows):
        raise argparse.ArgumentTypeError(f'windows must be positive, got {text!r}')
    return windows


def parse_args(argv=None):
    sources = ('greenmim_mm', 'official-g1', 'official-g3', 'timm', 'localmim',
               'localmim-official-swin', 'localmim-official-vit', 'timm-twins', 'official-twins')
    parser = argparse.ArgumentParser(
        description='Convert Swin weights (greenmim_mm pre-training, official GreenMIM, timm) '
        'to mmpretrain/mmdet backbone weights',
        epilog='official-g1: GreenMIM before commit b981012 (G1/G2, incl. the released '
        'checkpoints; row-first merge channels). official-g3: GreenMIM from b981012, Microsoft '
        'Swin, SimMIM (Swin merge order). timm: timm >= 0.6 Swin state dicts. localmim: our '
        'LocalMIM checkpoints (Swin, Twins, ViT). localmim-official-swin / -vit: the official '
        'LocalMIM checkpoints (Swin: row-first merge channels; ViT: to mmpretrain '
        'VisionTransformer). timm-twins: timm '
        'twins_svt_* state dicts. official-twins: official GreenMIM Twins-L pre-training (its '
        'missing PEG residual folded into the kernels; a Twins classification file is detected '
        'and converted as timm-twins). greenmim_mm also takes our Twins and ViT.')
    parser.add_argument('--src', required=True, choices=sources, help='source layout')
    parser.add_argument('input', help='source checkpoint')
    parser.add_argument('output', help='converted checkpoint to write')
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--window', type=int, help='target window of every stage (resizes the '
                       'relative position tables when it differs from the source)')
    group.add_argument('--stage-windows', type=parse_windows,
                       help='target window per stage, e.g. 14,14,14,7')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from greenmim_mm.converters import ConversionError, convert_file
    try:
        notes = convert_file(args.input, args.output, args.src, window=args.window,
                             stage_windows=args.stage_windows)
    except ConversionError as err:
        raise SystemExit(f'convert_checkpoint: error: {err}')
    for note in notes:
        print(note)
    print(f'saved {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

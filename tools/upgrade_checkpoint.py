"""Rewrite a *trusted* checkpoint in greenmim_mm's plain format (weights-only loadable).

    python tools/upgrade_checkpoint.py --trust OLD.pth NEW.pth

For a file greenmim_mm's safe loader refuses although you know where it comes from (e.g. written
by your own code with extra classes). The input is unpickled with ``weights_only=False``, which
runs any code it holds: never use this on a file from an untrusted source. The output loads with
``torch.load(NEW.pth, weights_only=True)`` and no allow-list. Checkpoints greenmim_mm wrote before
the plain format need no upgrade: the safe loader reads them.
"""
import argparse
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Rewrite a trusted checkpoint in the plain, '
                                     'weights-only loadable format')
    parser.add_argument('input', help='checkpoint to rewrite (unpickled with weights_only=False)')
    parser.add_argument('output', help='where to write the plain checkpoint')
    parser.add_argument('--trust', action='store_true', required=True,
                        help='confirm that INPUT comes from a trusted source: loading it may run '
                        'code')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from greenmim_mm.checkpoint_format import PlainFormatError, upgrade_trusted_file
    try:
        upgrade_trusted_file(args.input, args.output)
    except (OSError, ValueError, PlainFormatError) as err:
        raise SystemExit(f'upgrade_checkpoint: error: {err}')
    print(f'saved {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

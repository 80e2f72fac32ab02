"""Rewrite a checkpoint *you produced yourself* in greenmim_mm's plain format (weights-only
loadable).

    tools/env.sh python tools/upgrade_checkpoint.py --trust OLD.pth NEW.pth

For a file greenmim_mm's safe loader refuses although you wrote it yourself (e.g. with your own
classes in it). A file the safe loader reads is rewritten without running anything from it; any
other file is unpickled with ``weights_only=False``, which **runs any code it holds**: never use
this on a file you did not produce (downloaded, received, found). The output loads with
``torch.load(NEW.pth, weights_only=True)`` and no allow-list. Checkpoints greenmim_mm wrote before
the plain format need no upgrade: the safe loader reads them. Exit status 0 on success, 1 with one
``upgrade_checkpoint: error: ...`` line on any failure, 2 for bad arguments.
"""
import argparse
import sys

WARNING = ('upgrade_checkpoint: warning: the safe loader refuses {path}; unpickling it with '
           'weights_only=False now, which runs any code the file holds. Only for files you '
           'produced yourself.')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Rewrite a checkpoint you produced yourself in '
                                     'the plain, weights-only loadable format')
    parser.add_argument('input', help='checkpoint to rewrite (unpickled with weights_only=False '
                        'if the safe loader refuses it: runs code in the file)')
    parser.add_argument('output', help='where to write the plain checkpoint')
    parser.add_argument('--trust', action='store_true', required=True,
                        help='confirm that you produced INPUT yourself: loading it may run code')
    return parser.parse_args(argv)


def _one_line(err: BaseException) -> str:
    text = ' '.join(str(err).split())
    return f'{type(err).__name__}: {text}' if not isinstance(err, (OSError, ValueError)) or \
        not text else text


def main(argv=None) -> int:
    args = parse_args(argv)

    def warn():
        print(WARNING.format(path=args.input), file=sys.stderr, flush=True)

    try:
        from greenmim_mm.checkpoint.upgrade import upgrade_trusted_file
        upgrade_trusted_file(args.input, args.output, before_unpickling=warn)
    except Exception as err:  # noqa: BLE001  (one clear line, never a traceback and rc 0)
        raise SystemExit(f'upgrade_checkpoint: error: {_one_line(err)[:2000]}') from None
    print(f'saved {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

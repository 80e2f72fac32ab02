"""Train with a greenmim_mm (or any mmpretrain/mmdet) config: ``python tools/train.py CONFIG``.

Also the script ``mim train greenmim_mm CONFIG`` runs (from the package's ``.mim/tools``).
Entry point only; the logic is :mod:`greenmim_mm.apis.launch` (known failures, a diverged run
included, end with one line ``train: error: ...``). The options are parsed before the stack is
imported (``--help`` at once).
"""
import sys

from _light import load

if __name__ == '__main__':
    load('apis/cli_args').parse_train_args(sys.argv[1:])
    from greenmim_mm.apis import launch
    launch.train_tool()

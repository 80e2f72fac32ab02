"""Draw GreenMIM reconstructions:
``python tools/visualize_reconstruction.py CONFIG CHECKPOINT --out grid.png [--num 8]``.

Entry point only; the logic is :mod:`greenmim_mm.apis.visualization`. The options are parsed before
the stack is imported (``--help`` at once).
"""
import sys

from _light import load

if __name__ == '__main__':
    load('apis/cli_args').parse_reconstruction_args(sys.argv[1:])
    from greenmim_mm.apis.visualization import main
    main()

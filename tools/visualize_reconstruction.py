"""Draw GreenMIM reconstructions:
``python tools/visualize_reconstruction.py CONFIG CHECKPOINT --out grid.png [--num 8]``.

Entry point only; the logic is :mod:`greenmim_mm.visualization`. The options are parsed before
the stack is imported (``--help`` at once).
"""
import sys

from _light import load

if __name__ == '__main__':
    load('cli_args').parse_reconstruction_args(sys.argv[1:])
    from greenmim_mm.visualization import main
    main()

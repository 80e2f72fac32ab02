"""Draw every LocalMIM head's prediction and target for a checkpoint:
``python tools/visualize_localmim.py CONFIG CHECKPOINT --out heads.png [--num 4]``.

Entry point only; the logic is :mod:`greenmim_mm.apis.localmim_visualization`. The options are parsed
before the stack is imported (``--help`` at once).
"""
import sys

from _light import load

if __name__ == '__main__':
    load('apis/cli_args').parse_localmim_picture_args(sys.argv[1:])
    from greenmim_mm.apis.localmim_visualization import main
    main()

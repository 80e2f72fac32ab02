"""Draw every LocalMIM head's prediction and target for a checkpoint:
``python tools/visualize_localmim.py CONFIG CHECKPOINT --out heads.png [--num 4]``.

Entry point only; the logic is :mod:`greenmim_mm.localmim_visualization`.
"""
from greenmim_mm.localmim_visualization import main

if __name__ == '__main__':
    main()

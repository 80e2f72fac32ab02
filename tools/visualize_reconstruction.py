"""Draw GreenMIM reconstructions:
``python tools/visualize_reconstruction.py CONFIG CHECKPOINT --out grid.png [--num 8]``.

Entry point only; the logic is :mod:`greenmim_mm.visualization`.
"""
from greenmim_mm.visualization import main

if __name__ == '__main__':
    main()

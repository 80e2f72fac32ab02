"""Generate the synthetic demo data set: ``python tools/make_demo_data.py [--out data/demo]``.

Entry point only; the generator is :mod:`greenmim_mm.datasets.demo_data`.
"""
import sys

from greenmim_mm.datasets.demo_data import main

if __name__ == '__main__':
    sys.exit(main())

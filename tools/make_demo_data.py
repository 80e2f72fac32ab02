"""Generate the synthetic demo data set: ``python tools/make_demo_data.py [--out data/demo]``.

Entry point only; the generator is :mod:`greenmim_mm.datasets.demo_data` (numpy and Pillow only),
loaded on its own so the tool does not import torch and the OpenMMLab stack.
"""
import sys

from _light import load

if __name__ == '__main__':
    sys.exit(load('datasets/demo_data').main())

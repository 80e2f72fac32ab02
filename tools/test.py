"""Evaluate a checkpoint: ``python tools/test.py CONFIG CHECKPOINT`` (``mim test greenmim_mm``).

Entry point only; the logic is :mod:`greenmim_mm.launch`.
"""
from greenmim_mm.launch import main_test

if __name__ == '__main__':
    main_test()

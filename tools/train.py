"""Train with a greenmim_mm (or any mmpretrain/mmdet) config: ``python tools/train.py CONFIG``.

Also the script ``mim train greenmim_mm CONFIG`` runs (from the package's ``.mim/tools``).
Entry point only; the logic is :mod:`greenmim_mm.launch` (known failures, a diverged run
included, end with one line ``train: error: ...``).
"""
from greenmim_mm.launch import train_tool

if __name__ == '__main__':
    train_tool()

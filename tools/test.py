"""Evaluate a checkpoint with a config: ``python tools/test.py CONFIG CHECKPOINT``.

Also the script ``mim test greenmim_mm CONFIG --checkpoint CKPT`` runs. Entry point only; the
logic is :mod:`greenmim_mm.apis.launch`. The options are parsed before the stack is imported.
"""
import sys

from _light import load

if __name__ == '__main__':
    load('apis/cli_args').parse_test_args(sys.argv[1:])
    from greenmim_mm.apis.launch import main_test
    main_test()

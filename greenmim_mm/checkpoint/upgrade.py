"""Rewriting an older checkpoint in the plain format (``tools/upgrade_checkpoint.py``).

Depends on :mod:`~greenmim_mm.checkpoint.loading` (read),
:mod:`~greenmim_mm.checkpoint.plain_format` (convert) and
:mod:`~greenmim_mm.checkpoint.atomic_files` (write); nothing depends on it, so the checkpoint
modules import one another one way only (docs/design.md, "Layout").
"""
import io
from typing import Callable

import torch

from .atomic_files import atomic_write_bytes, is_same_file
from .loading import UnsafeCheckpointError, load_checkpoint_file
from .plain_format import to_plain


def upgrade_trusted_file(in_path: str, out_path: str,
                         before_unpickling: Callable[[], None] = lambda: None) -> bool:
    """Rewrite the checkpoint ``in_path`` in the plain format to ``out_path`` (atomically).

    A file the safe loader reads (:func:`greenmim_mm.checkpoint.loading.load_checkpoint_file`) is
    rewritten from what it returns, running nothing from the file. Otherwise
    ``before_unpickling()`` is called (the tool prints its warning) and ``in_path`` is
    **unpickled with ``weights_only=False``: it runs whatever code the file holds.** Only for
    files you produced yourself. Returns whether that unsafe unpickling happened.

    Raises ``ValueError`` when ``out_path`` is ``in_path`` (same file, any spelling),
    :class:`PlainFormatError` when a value has no plain form, whatever loading raises; the result
    is checked to load with plain ``torch.load(weights_only=True)`` before it is written.
    """
    if is_same_file(in_path, out_path):
        raise ValueError(f'output {out_path} is the input file {in_path}; choose another path')
    try:
        checkpoint, unsafe = load_checkpoint_file(in_path, map_location='cpu'), False
    except UnsafeCheckpointError:
        before_unpickling()
        checkpoint = torch.load(in_path, map_location='cpu', weights_only=False)
        unsafe = True
    buffer = io.BytesIO()
    torch.save(to_plain(checkpoint), buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)  # the point of the format: no allow-list needed
    atomic_write_bytes(out_path, buffer.getbuffer())
    return unsafe

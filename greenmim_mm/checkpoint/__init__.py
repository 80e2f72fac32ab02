"""Checkpoint files: safe loading, the plain format, numpy payloads, the static scan, atomic writes.

The modules import one another one way only (``tests/test_package_layout.py`` checks it)::

    numpy_values   scan   atomic_files        (no greenmim_mm imports)
         |          |          |
    plain_format    |          |              (numpy_values)
          \\         |          |
           loading -+          |              (plain_format, numpy_values, scan)
                \\              |
                 upgrade ------+              (loading, plain_format, atomic_files)

The names below are the ones other code uses; see docs/checkpoints.md.
"""
from .atomic_files import atomic_torch_save, atomic_write_bytes, is_same_file
from .loading import (CheckpointLoadError, UnsafeCheckpointError, load_checkpoint_file,
                      register_with_mmengine, safe_globals)
from .plain_format import PlainFormatError, from_plain, to_plain

__all__ = ['CheckpointLoadError', 'UnsafeCheckpointError', 'load_checkpoint_file',
           'register_with_mmengine', 'safe_globals', 'PlainFormatError', 'from_plain', 'to_plain',
           'atomic_torch_save', 'atomic_write_bytes', 'is_same_file']

"""Loading checkpoint files safely: ``weights_only=True`` with an allow-list of inert classes.

Every file a user hands us is treated as hostile. :func:`load_checkpoint_file` is the one way
greenmim_mm opens a checkpoint; :func:`register_with_mmengine` routes mmengine's loaders (local
paths and URLs, i.e. ``load_from``, ``resume``, ``init_cfg=dict(type='Pretrained', ...)``,
``load_checkpoint``, mmdet's and mmpretrain's backbones) through it.

Allowed besides what torch's weights-only unpickler allows by default (tensors, containers,
numbers, strings, ``OrderedDict``): :data:`SAFE_GLOBALS`, all inert data classes or constructors
of plain values -- numpy arrays, dtypes and scalars (mmcv/mmengine meta, old message hubs),
``argparse.Namespace`` (the ``args`` of official GreenMIM / MAE / timm training checkpoints) and,
for greenmim_mm/mmengine checkpoints written before the plain format
(:mod:`greenmim_mm.checkpoint_format`), mmengine's ``HistoryBuffer`` mapped to the inert
:class:`~greenmim_mm.checkpoint_format.LegacyHistoryBuffer` record, with the
``getattr(HistoryBuffer, 'min' | 'max' | 'current' | 'mean')`` such pickles use for its statistics
methods answered by a lookup of those four names on that record only. No allow-listed callable can
reach an attribute, a module or code: ``builtins.getattr``, ``eval``, ``__import__``, ``partial``
and the like are refused (torch's own list holds none of them).

A refused file raises :class:`UnsafeCheckpointError` naming the file and the global; an unreadable
one (truncated, not a torch file) :class:`CheckpointLoadError`.
"""
import argparse
import os
import os.path as osp
import pickle
import re
from typing import Any, Optional

import numpy as np
import torch

from .checkpoint_format import HISTORY_STATISTICS, LegacyHistoryBuffer, from_plain

_HISTORY_BUFFER = 'mmengine.logging.history_buffer.HistoryBuffer'


class CheckpointLoadError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file and the cause."""


class UnsafeCheckpointError(CheckpointLoadError, pickle.UnpicklingError):
    """A checkpoint that pickles something outside the allow-list (it could run code)."""


def _history_statistic(owner, name):
    """Stands in for ``builtins.getattr`` in old mmengine pickles: only
    ``getattr(HistoryBuffer, <statistic>)`` is answered (with the statistic's name)."""
    if owner is LegacyHistoryBuffer and name in HISTORY_STATISTICS:
        return name
    raise pickle.UnpicklingError(
        f'getattr({owner!r}, {name!r}) (builtins.getattr is only answered for '
        f'HistoryBuffer.{"|".join(HISTORY_STATISTICS)})')


def _numpy_globals() -> list:
    """numpy array, dtype and scalar reconstruction, under numpy 2 and numpy 1 names."""
    core = np._core if hasattr(np, '_core') else np.core
    reconstruct, scalar = core.multiarray._reconstruct, core.multiarray.scalar
    found = [np.ndarray, np.dtype, reconstruct, scalar,
             (reconstruct, 'numpy.core.multiarray._reconstruct'),
             (scalar, 'numpy.core.multiarray.scalar')]
    dtype_classes = getattr(np, 'dtypes', None)  # numpy >= 1.25: type(np.dtype('f8')) etc.
    if dtype_classes is not None:
        found += [getattr(dtype_classes, n) for n in dir(dtype_classes) if n.endswith('DType')]
    return found


def safe_globals() -> list:
    """The allow-list (for ``torch.serialization.safe_globals``); see the module docstring."""
    return _numpy_globals() + [
        argparse.Namespace,
        (LegacyHistoryBuffer, _HISTORY_BUFFER),
        (_history_statistic, 'builtins.getattr'),
    ]


def _refused_global(err: Exception) -> Optional[str]:
    text = str(err)
    for pattern in (r'Unsupported global: GLOBAL (\S+)', r'unsupported GLOBAL (\S+)',
                    r'(getattr\(.*\) \(builtins\.getattr is only answered[^\n]*\))',
                    r'Trying to call reduce for unrecognized function ([^\n]+)',
                    r'(Can only (?:create|build)[^\n]+)'):
        found = re.search(pattern, text)
        if found:
            name = found.group(1).rstrip('.')
            # torch prints builtins without their module ('GLOBAL print')
            return name if '.' in name or not name.isidentifier() else f'builtins.{name}'
    return None


def _describe(path: str, err: Exception) -> CheckpointLoadError:
    what = _refused_global(err)
    if what is not None or isinstance(err, pickle.UnpicklingError):
        what = what or str(err).strip().splitlines()[0]
        return UnsafeCheckpointError(
            f'cannot read {path}: it pickles {what}, which is not allowed (greenmim_mm loads '
            'checkpoints weights-only with inert classes only: tensors, containers, numbers, '
            'numpy arrays/scalars, argparse.Namespace, mmengine HistoryBuffer); such a file can '
            'run code when loaded. Only if you trust its origin, convert it with: python '
            f'tools/upgrade_checkpoint.py --trust {path} NEW.pth')
    text = str(err).strip().splitlines()[0] if str(err).strip() else ''
    return CheckpointLoadError(f'cannot read {path} as a torch checkpoint: '
                               f'{type(err).__name__}: {text}')


def load_checkpoint_file(path: str, map_location: Any = None) -> Any:
    """Load the checkpoint at ``path`` weights-only with :func:`safe_globals`, then restore
    plain-format and legacy values (:func:`greenmim_mm.checkpoint_format.from_plain`).

    Raises ``FileNotFoundError`` ('... can not be found', as mmengine's loader),
    :class:`UnsafeCheckpointError` for a refused global, :class:`CheckpointLoadError` for an
    unreadable file.
    """
    path = osp.expanduser(os.fspath(path))
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} can not be found.')
    try:
        with torch.serialization.safe_globals(safe_globals()):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling, zip and EOF errors all mean "not loadable"
        raise _describe(path, err) from None
    return _restored(path, checkpoint)


def _restored(path: str, checkpoint: Any) -> Any:
    try:
        return from_plain(checkpoint)
    except Exception as err:
        raise CheckpointLoadError(f'cannot read {path}: malformed greenmim_mm/mmengine values: '
                                  f'{type(err).__name__}: {err}') from None


def load_url_safely(url: str, model_dir: Optional[str] = None, map_location: Any = None,
                    progress: bool = True, check_hash: bool = False,
                    file_name: Optional[str] = None) -> Any:
    """mmengine's ``load_url`` (torch.hub's download cache), loading weights-only with
    :func:`safe_globals` (torch.hub's own default is ``weights_only=False``)."""
    try:
        with torch.serialization.safe_globals(safe_globals()):
            checkpoint = torch.hub.load_state_dict_from_url(
                url, model_dir=model_dir, map_location=map_location, progress=progress,
                check_hash=check_hash, file_name=file_name, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise _describe(url, err) from None
    return _restored(url, checkpoint)


def load_from_local_weights_only(filename: str, map_location: Any = None) -> Any:
    """:func:`load_checkpoint_file` under the name mmengine logs ('Loads checkpoint by
    local_weights_only backend': it strips the ``load_from_`` prefix)."""
    return load_checkpoint_file(filename, map_location)


def register_with_mmengine() -> None:
    """Route mmengine's checkpoint loading through this module: the local-path scheme
    (``CheckpointLoader``'s empty prefix) and the URL download every remote scheme uses
    (``http(s)://``, ``torchvision://``, ``open-mmlab://``, ``mmcls://``). Idempotent."""
    from mmengine.runner import checkpoint as mmengine_checkpoint
    mmengine_checkpoint.CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local_weights_only, force=True)
    mmengine_checkpoint.load_url = load_url_safely

"""Compatibility patches for the pinned OpenMMLab stack on current torch / SciPy.

Applied once when ``greenmim_mm`` is imported (``apply_patches()``); each patch is idempotent and
changes no installed file.

1. ``weights_only`` checkpoint loading (torch >= 2.6 defaults ``torch.load`` to ``weights_only=True``).
   mmengine 0.10.7's local-file loader calls ``torch.load`` without the argument, so resuming a
   training checkpoint fails on the objects mmengine itself stores (its message hub's
   ``HistoryBuffer`` holding numpy arrays and scalars). We re-register mmengine's loader for local
   paths so it loads with ``weights_only=True`` inside ``torch.serialization.safe_globals`` of exactly
   those classes (``MMENGINE_SAFE_GLOBALS``): third-party weights are still loaded safely and
   nothing else is unpickled.
2. ``scipy.interpolate.interp2d`` was removed in SciPy 1.14; mmpretrain 1.2.0 calls it (cubic) in
   ``resize_relative_position_bias_table`` when a Swin window size changes (e.g. 6 -> 7). On a
   rectangular grid without smoothing ``interp2d`` is a bicubic interpolating spline (FITPACK
   ``regrid_smth`` with s=0), which ``RectBivariateSpline`` computes identically; we provide a
   minimal ``interp2d`` with that behaviour when SciPy lacks a working one.
"""
import os.path as osp

import numpy as np
import torch

_APPLIED = False


def _numpy_safe_globals() -> list:
    """numpy objects that appear in pickled arrays and scalars (numpy 1.x and 2.x names)."""
    core = getattr(np, '_core', None) or np.core
    found = [np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar]
    dtype_classes = getattr(np, 'dtypes', None)
    if dtype_classes is not None:
        found += [getattr(dtype_classes, n) for n in dir(dtype_classes) if n.endswith('DType')]
    return found


def mmengine_safe_globals() -> list:
    """Exactly the non-tensor objects an mmengine 0.10 training checkpoint holds.

    The message hub's ``HistoryBuffer`` with its numpy arrays and scalars; numpy 2 pickles dtypes
    through ``getattr(numpy.dtypes, ...)`` (the weights-only unpickler still only *calls*
    allow-listed functions) and numpy 1 pickles scalars' bytes through ``_codecs.encode``.
    """
    import _codecs
    import builtins

    from mmengine.logging.history_buffer import HistoryBuffer
    return [HistoryBuffer, _codecs.encode, builtins.getattr] + _numpy_safe_globals()


def load_local_checkpoint(filename: str, map_location=None):
    """mmengine's local-file loader, with ``weights_only=True`` and mmengine's own classes allowed."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    with torch.serialization.safe_globals(mmengine_safe_globals()):
        return torch.load(filename, map_location=map_location, weights_only=True)


def patch_checkpoint_loading() -> None:
    """Route mmengine's local checkpoint loading through :func:`load_local_checkpoint`."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)


class Interp2dCubic:
    """The subset of the removed ``scipy.interpolate.interp2d`` that mmpretrain uses.

    ``Interp2dCubic(x, y, z)`` with z of shape (len(y), len(x)) on a rectangular grid;
    ``f(xnew, ynew)`` returns (len(ynew), len(xnew)), like interp2d with ``kind='cubic'``.
    """

    def __init__(self, x, y, z, kind='cubic', **kwargs):
        from scipy.interpolate import RectBivariateSpline
        if kind != 'cubic' or kwargs:
            raise NotImplementedError(
                'greenmim_mm.compat.Interp2dCubic only replaces interp2d(x, y, z, kind="cubic") '
                f'on a rectangular grid; got kind={kind!r}, extra arguments {sorted(kwargs)}')
        z = np.asarray(z, dtype=float)
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if z.shape != (len(y), len(x)):
            raise ValueError(f'z must have shape (len(y), len(x)) = {(len(y), len(x))}, got {z.shape}')
        self._spline = RectBivariateSpline(y, x, z, kx=3, ky=3, s=0)

    def __call__(self, xnew, ynew):
        xnew = np.sort(np.atleast_1d(np.asarray(xnew, dtype=float)))
        ynew = np.sort(np.atleast_1d(np.asarray(ynew, dtype=float)))
        return self._spline(ynew, xnew)


def _scipy_has_interp2d() -> bool:
    from scipy import interpolate
    fn = getattr(interpolate, 'interp2d', None)
    if fn is None:
        return False
    try:
        fn([0., 1., 2., 3.], [0., 1., 2., 3.], np.zeros((4, 4)), kind='cubic')
    except Exception:  # SciPy >= 1.14 keeps a stub that raises
        return False
    return True


def patch_scipy_interp2d() -> None:
    """Give ``scipy.interpolate`` a working cubic ``interp2d`` if it has none."""
    from scipy import interpolate
    if not _scipy_has_interp2d():
        interpolate.interp2d = Interp2dCubic


def apply_patches() -> None:
    """Apply every patch once."""
    global _APPLIED
    if _APPLIED:
        return
    patch_checkpoint_loading()
    patch_scipy_interp2d()
    _APPLIED = True

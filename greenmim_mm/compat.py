"""Compatibility patches for the pinned OpenMMLab stack on current torch / SciPy.

Applied once when ``greenmim_mm`` is imported (``apply_patches()``); each patch is idempotent and
changes no installed file.

1. ``weights_only`` checkpoint loading (torch >= 2.6 defaults ``torch.load`` to
   ``weights_only=True``; mmengine 0.10.7's local loader calls it without the argument, its URL
   loader through torch.hub with ``weights_only=False``). mmengine's loaders are routed through
   :mod:`greenmim_mm.checkpoint.loading`: weights-only with an allow-list of inert classes, which
   also reads checkpoints written before greenmim_mm's plain format
   (:mod:`greenmim_mm.checkpoint.plain_format`) without allowing ``getattr``.
2. ``scipy.interpolate.interp2d`` was removed in SciPy 1.14; mmpretrain 1.2.0 calls it (cubic) in
   ``resize_relative_position_bias_table`` when a Swin window size changes (e.g. 6 -> 7). On a
   rectangular grid without smoothing ``interp2d`` is a bicubic interpolating spline (FITPACK
   ``regrid_smth`` with s=0), which ``RectBivariateSpline`` computes identically; we provide a
   minimal ``interp2d`` with that behaviour when SciPy lacks a working one.
"""
import numpy as np

_APPLIED = False


def patch_checkpoint_loading() -> None:
    """Route mmengine's checkpoint loading through :mod:`greenmim_mm.checkpoint.loading`."""
    from .checkpoint.loading import register_with_mmengine
    register_with_mmengine()


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

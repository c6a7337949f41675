"""HU rendering: tissue classes to CT values with texture, vessels, tumours, blur and noise."""

from __future__ import annotations

import numpy as np
from scipy import ndimage, special

from lungtumor.phantom.anatomy import _Anatomy
from lungtumor.phantom.grid import _Grid, _SizeSpec
from lungtumor.phantom.tissues import _BONE, _CLASS_HU, _CLASS_TEXTURE_HU, _LUNG, _N_CLASSES, _TUMOUR, _Painter
from lungtumor.phantom.tumours import _Tumour
from lungtumor.phantom.vessels import _BYTE, HU_VESSEL

__all__ = ["CT_HU_RANGE", "TEXTURE_CORRELATION_MM"]

CT_HU_RANGE = (-1024, 3071)
"""int16 CT values are clipped to the 12-bit range of a CT scanner."""
TEXTURE_CORRELATION_MM = 6.0
"""Correlation length of the smooth tissue texture."""


class _SmoothField:
    """Smooth random field with unit variance, produced one axial slice at a time.

    A coarse Gaussian-smoothed white-noise grid (spacing = the correlation length) is
    interpolated linearly. Only element-wise NumPy is used (no BLAS), so the bytes do not
    depend on the number of threads.
    """

    def __init__(self, rng: np.random.Generator, grid: _Grid, corr_mm: float) -> None:
        sx, sy, sz = grid.spacing_mm
        nx, ny, nz = grid.shape
        self._pos = [np.arange(n) * s / corr_mm + 1.0 for n, s in ((nx, sx), (ny, sy), (nz, sz))]
        coarse_shape = tuple(int(np.floor(p[-1])) + 3 for p in self._pos)
        coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 1.0, mode="wrap")
        self._coarse = (coarse / coarse.std()).astype(np.float32)
        self._ix = np.floor(self._pos[0]).astype(np.intp)
        self._wx = (self._pos[0] - self._ix).astype(np.float32)[None, :]
        self._iy = np.floor(self._pos[1]).astype(np.intp)
        self._wy = (self._pos[1] - self._iy).astype(np.float32)[:, None]
        self._cache: dict[int, np.ndarray] = {}

    def _plane(self, c: int) -> np.ndarray:
        if c not in self._cache:
            if len(self._cache) > 2:  # slices are visited in order: keep the last few planes
                self._cache.pop(min(self._cache))
            a = self._coarse[:, :, c].T  # (coarse j, coarse i)
            ay = a[self._iy] * (1.0 - self._wy) + a[self._iy + 1] * self._wy
            self._cache[c] = ay[:, self._ix] * (1.0 - self._wx) + ay[:, self._ix + 1] * self._wx
        return self._cache[c]

    def slice(self, k: int) -> np.ndarray:
        """The field on axial slice ``k``, shape (J, I) (the renderer's slice layout), float32."""
        pos = self._pos[2][k]
        c = int(np.floor(pos))
        f = np.float32(pos - c)
        return self._plane(c) * (np.float32(1.0) - f) + self._plane(c + 1) * f


_NOISE_TABLE_SIZE = 1 << 16
#: Standard normal quantiles at the centres of 2**16 equal-probability bins: indexing this table
#: with uniform uint16 draws gives Gaussian noise (to +-4.3 sigma) about 4x faster than
#: ``Generator.standard_normal``.
_GAUSS_TABLE = special.ndtri((np.arange(_NOISE_TABLE_SIZE) + 0.5) / _NOISE_TABLE_SIZE).astype(np.float32)
_BLUR_MIN_SIGMA_PX = 0.5  # below this the point-spread function is not worth a filter pass


def _blur_binomial(img: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur (sigma = 0.71 px), edges replicated; float32 in and out."""
    for axis in (0, 1):
        a = np.moveaxis(img, axis, 0)
        out = 0.5 * a
        out[1:] += 0.25 * a[:-1]
        out[:-1] += 0.25 * a[1:]
        out[0] += 0.25 * a[0]
        out[-1] += 0.25 * a[-1]
        img = np.moveaxis(out, 0, axis)
    return np.ascontiguousarray(img)


def _render(
    rng: np.random.Generator,
    grid: _Grid,
    an: _Anatomy,
    spec: _SizeSpec,
    tumours: list[_Tumour],
    vessel_kji: np.ndarray,
    tumour_kji: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint tissue classes slice by slice, then HU = base + texture + vessels + blur + noise.

    Args:
        vessel_kji: vessel occupancy 0..255, stored (K, J, I).
        tumour_kji: tumour index (1..n, 0 = none), stored (K, J, I).

    Returns:
        CT int16 and label uint8, shape (I, J, K) (Fortran-ordered views of (K, J, I) memory,
        the layout nibabel itself returns).
    """
    nx, ny, nz = grid.shape
    painter = _Painter(grid, an)
    hu_lut = np.array([_CLASS_HU[c] for c in range(_N_CLASSES)], dtype=np.float32)
    hu_lut[_LUNG] = an.lung_hu
    hu_lut[_BONE] = an.bone_hu
    amp_lut = np.array([_CLASS_TEXTURE_HU.get(c, 0.0) for c in range(_N_CLASSES)], dtype=np.float32)
    tumour_hu = np.array([0.0] + [t.hu for t in tumours], dtype=np.float32)
    noise_table = _GAUSS_TABLE * np.float32(an.noise_sigma_hu)
    texture = _SmoothField(rng, grid, TEXTURE_CORRELATION_MM)
    blur = spec.blur_mm / grid.spacing_mm[0] >= _BLUR_MIN_SIGMA_PX
    vessel_gain = np.float32(1.0 / _BYTE)
    tumour_slices = tumour_kji.reshape(nz, -1).any(axis=1)

    ct = np.empty((nz, ny, nx), dtype=np.int16)
    label = np.zeros((nz, ny, nx), dtype=np.uint8)
    flat = np.empty(nx * ny, dtype=np.uint8)
    for k in range(nz):
        tex = texture.slice(k).ravel()
        lung = painter.paint(flat, float(grid.w(k)), tex)
        hu = np.take(hu_lut, flat)
        hu += np.take(amp_lut, flat) * tex
        if lung is not None:
            # Tumours replace lung tissue only: the label is exactly where that happened.
            if tumour_slices[k]:
                tum = tumour_kji[k].ravel()
                t_idx = np.flatnonzero(tum)
                t_idx = t_idx[flat[t_idx] == _LUNG]
                flat[t_idx] = _TUMOUR
                label[k].ravel()[t_idx] = 1
                hu[t_idx] = tumour_hu[tum[t_idx]] + amp_lut[_TUMOUR] * tex[t_idx]
            lung = lung[flat[lung] == _LUNG]
            hu[lung] += painter.gravity[lung]
            occ = vessel_kji[k].ravel()[lung]
            vessel = occ > 0
            if vessel.any():
                v_idx = lung[vessel]
                hu[v_idx] += occ[vessel] * vessel_gain * (np.float32(HU_VESSEL) - hu[v_idx])
        if blur:  # the scanner's point-spread function (negligible on coarse grids)
            hu = _blur_binomial(hu.reshape(ny, nx)).ravel()
        hu += np.take(noise_table, rng.integers(0, _NOISE_TABLE_SIZE, hu.size, dtype=np.uint16))
        np.clip(np.rint(hu), CT_HU_RANGE[0], CT_HU_RANGE[1], out=hu)
        ct[k] = hu.reshape(ny, nx)
    return ct.transpose(2, 1, 0), label.transpose(2, 1, 0)


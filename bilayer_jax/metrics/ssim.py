"""SSIM between generated and real frames (evaluation; optional in the authors' code, docs/model.md §4).

Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, population (not sample) covariances, computed per
channel and averaged: the same number as skimage.metrics.structural_similarity(a, b,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=-1, data_range=R).
skimage averages the SSIM map over the pixels at least 5 away from the border; those are exactly the
pixels a 'VALID' filter produces, so its border padding never matters.

Intensities: uint8 images are divided by 255; float images are taken to be in [-1, 1] and mapped to
[0, 1] first, because SSIM's luminance term is not shift invariant - this way a float frame and its uint8
version score the same. With an explicit data_range the raw values are used (skimage's semantics).
(The authors' optional SSIM ran on [-1, 1] values with range-1 constants and zero padding; not reproduced.)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax.metrics.psnr import check_pair

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> np.ndarray:
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2
  w = np.exp(-0.5 * (x / sigma) ** 2)
  return w / w.sum()


def _valid_filter_matrix(length: int, window: np.ndarray) -> np.ndarray:
  """(length - size + 1, length) banded matrix: a 'VALID' 1-D filter as one matmul (fast on CPU and GPU)."""
  size = window.shape[0]
  m = np.zeros((length - size + 1, length), np.float32)
  for i in range(length - size + 1):
    m[i, i:i + size] = window
  return m


def _to_unit_range(images, data_range):
  x = jnp.asarray(images, jnp.float32)
  if data_range is not None:
    return x / float(data_range)
  dtype = np.dtype(images.dtype)
  if dtype == np.uint8:
    return x / 255.0
  if dtype.kind == 'f':
    return (x + 1.0) / 2.0
  raise TypeError(f'images must be float in [-1, 1] or uint8, got dtype {dtype}; pass data_range explicitly')


def ssim(a, b, data_range: float | None = None, reduce: bool = True):
  """Mean structural similarity per image (mean over channels), then over the batch unless reduce=False.

  a, b: (..., H, W, C) with H, W >= 11.
  """
  check_pair(a, b)
  *lead, h, w, c = a.shape
  if h < WINDOW or w < WINDOW:
    raise ValueError(f'SSIM needs images of at least {WINDOW}x{WINDOW} pixels, got {h}x{w}')
  x = _to_unit_range(a, data_range).reshape(-1, h, w, c)
  y = _to_unit_range(b, data_range).reshape(-1, h, w, c)
  per_image = _ssim_unit_range(x, y).reshape(lead)
  return jnp.mean(per_image) if reduce else per_image


@jax.jit
def _ssim_unit_range(x, y):
  """Per-image SSIM of (N, H, W, C) batches with intensities in [0, 1]."""
  _, h, w, _ = x.shape
  window = gaussian_window()
  rows, cols = _valid_filter_matrix(h, window), _valid_filter_matrix(w, window)
  stacked = jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1)
  hi = jax.lax.Precision.HIGHEST
  stats = jnp.einsum('ph,nhwc->npwc', rows, stacked, precision=hi)
  stats = jnp.einsum('qw,npwc->npqc', cols, stats, precision=hi)
  mx, my, mxx, myy, mxy = jnp.split(stats, 5, axis=-1)
  vx = mxx - mx * mx
  vy = myy - my * my
  cxy = mxy - mx * my
  c1, c2 = K1 ** 2, K2 ** 2
  s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
  return jnp.mean(s, axis=(1, 2, 3))

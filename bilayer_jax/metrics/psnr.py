"""PSNR between generated and real frames (evaluation, after rendering).

Images are (..., H, W, C): float images in [-1, 1] (data range 2) or uint8 (data range 255), the range
taken from the dtype unless given. PSNR is computed per image, then averaged over the batch; identical
images give +inf (no cap), as in skimage.metrics.peak_signal_noise_ratio.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def data_range_of(images) -> float:
  """2.0 for float images in [-1, 1], 255.0 for uint8."""
  dtype = np.dtype(images.dtype)
  if dtype == np.uint8:
    return 255.0
  if dtype.kind == 'f':
    return 2.0
  raise TypeError(f'images must be float in [-1, 1] or uint8, got dtype {dtype}; pass data_range explicitly')


def check_pair(a, b) -> None:
  if a.shape != b.shape:
    raise ValueError(f'image shapes differ: {a.shape} vs {b.shape}')
  if np.dtype(a.dtype) != np.dtype(b.dtype):
    raise ValueError(f'image dtypes differ: {a.dtype} vs {b.dtype} (convert both to the same range first)')
  if a.ndim < 3:
    raise ValueError(f'images must be (..., H, W, C), got shape {a.shape}')


def psnr(a, b, data_range: float | None = None, reduce: bool = True):
  """Peak signal-to-noise ratio in dB; mean over the leading (batch) axes unless reduce=False."""
  check_pair(a, b)
  data_range = data_range_of(a) if data_range is None else float(data_range)
  diff = jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)
  mse = jnp.mean(diff * diff, axis=(-3, -2, -1))
  per_image = 10.0 * jnp.log10(data_range ** 2 / mse)
  return jnp.mean(per_image) if reduce else per_image

"""Resampling: nearest x2 upsampling, 2x2 average pooling (each in an export form and a training form), PyTorch's adaptive average pooling.

Nearest upsampling has two exactly equal forms: `jax.image.resize(..., 'nearest')`, which the TFLite
converter maps to RESIZE_NEAREST_NEIGHBOR (a GPU-delegate op), and broadcast + reshape, which trains
faster under XLA on CPU but converts to BROADCAST_TO (docs/performance.md, docs/export.md). The form is a
switch, not a fork of the model.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

UPSAMPLE_MODES = ('resize', 'broadcast')


def upsample_nearest_2x(x: jax.Array, mode: str = 'resize') -> jax.Array:
  """NHWC nearest-neighbour x2: each pixel becomes a 2x2 block."""
  n, h, w, c = x.shape
  if mode == 'resize':
    return jax.image.resize(x, (n, 2 * h, 2 * w, c), method='nearest')
  if mode == 'broadcast':
    y = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c))
    return y.reshape(n, 2 * h, 2 * w, c)
  raise ValueError(f'unknown upsample mode {mode!r}; expected one of {UPSAMPLE_MODES}')


DOWNSAMPLE_MODES = ('reduce_window', 'reshape')


def avg_pool_2x(x: jax.Array, mode: str = 'reduce_window') -> jax.Array:
  """NHWC 2x2 average pooling with stride 2.

  'reduce_window' converts to AVERAGE_POOL_2D; 'reshape' (a sum over a (h/2, 2, w/2, 2) view) is the same
  math and trains faster under XLA on CPU: the gradient of reduce_window is a padded reduce_window that runs
  on one thread, the gradient of the reshape form is a broadcast that fuses into its neighbours.
  """
  if mode == 'reduce_window':
    y = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')
  elif mode == 'reshape':
    n, h, w, c = x.shape
    if h % 2 or w % 2:
      raise ValueError(f'2x2 average pooling needs even height and width, got {h}x{w}')
    y = x.reshape(n, h // 2, 2, w // 2, 2, c).sum(axis=(2, 4))
  else:
    raise ValueError(f'unknown downsample mode {mode!r}; expected one of {DOWNSAMPLE_MODES}')
  return y * jnp.asarray(0.25, x.dtype)


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) averaging matrix of torch.nn.AdaptiveAvgPool over one axis.

  Bin i covers [floor(i * in / out), ceil((i + 1) * in / out)); when out is a multiple of in this is
  nearest-neighbour replication (docs/model.md Q2).
  """
  m = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = math.ceil((i + 1) * in_size / out_size)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool_nchw(x: jax.Array, out_size: int) -> jax.Array:
  """Adaptive average pooling of a channel-first (B, C, H, W) tensor to (B, C, out, out)."""
  ph = jnp.asarray(adaptive_pool_matrix(x.shape[2], out_size), x.dtype)
  pw = jnp.asarray(adaptive_pool_matrix(x.shape[3], out_size), x.dtype)
  return jnp.einsum('bchw,Hh,Ww->bcHW', x, ph, pw)

"""Keypoints embedder (docs/model.md §2.3), run per frame: 68 keypoints -> the inference generator's input tensor."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax.nn.layers import EVAL, Dense, Mode, leaky_relu


def harmonic_encoding(poses: jax.Array, num_harmonics: int) -> jax.Array:
  """(N, D) -> (N, 2 * D * num_harmonics): [sin, cos] of v * pi * 2^j, coordinate-major."""
  frequencies = jnp.asarray(np.pi * 2.0 ** np.arange(num_harmonics), poses.dtype)
  angles = (poses[..., None] * frequencies).reshape(poses.shape[0], -1)
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class KeypointsEmbedder(nn.Module):
  hidden: int
  num_layers: int
  out_features: int
  out_size: int
  harmonics: int = 0  # 0: raw keypoints; otherwise the number of harmonic frequencies
  spectral_norm: bool = True
  eps: float = 1e-7

  @nn.compact
  def __call__(self, poses: jax.Array, mode: Mode = None) -> jax.Array:
    """poses: (N, 2K) interleaved (x0, y0, x1, ...) in [-1, 1]. Returns (N, s, s, C)."""
    mode = mode or EVAL
    h = harmonic_encoding(poses, self.harmonics) if self.harmonics else poses
    out = self.out_features * self.out_size ** 2
    widths = [out] if self.num_layers == 1 else [self.hidden] * (self.num_layers - 1) + [out]
    for i, width in enumerate(widths):
      if i:
        h = leaky_relu(h)
      h = Dense(width, self.spectral_norm, self.eps, name=f'dense_{i}')(h, mode)
    # The reference views the vector channel-major (C, s, s).
    h = h.reshape(-1, self.out_features, self.out_size, self.out_size)
    return jnp.transpose(h, (0, 2, 3, 1))

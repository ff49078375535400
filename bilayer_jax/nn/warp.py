"""Bilinear texture sampling (the warp of the high-frequency layer, docs/model.md §2.4).

Semantics of `torch.nn.functional.grid_sample(mode='bilinear', padding_mode='zeros')`: uv in [-1, 1],
last axis (x, y); taps outside the texture contribute zero. With align_corners=False (the default, and
what the authors' identity grid assumes) pixel x = ((u + 1) * W - 1) / 2.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bilayer_jax.nn.layers import at_least_float32


def identity_grid(size: int, dtype=jnp.float32) -> jax.Array:
  """(size, size, 2) grid of pixel-centre coordinates -1 + (2i + 1) / size, last axis (x, y)."""
  edges = jnp.linspace(-1.0, 1.0, size + 1, dtype=jnp.float32)
  centres = (edges[1:] + edges[:-1]) / 2
  x = jnp.broadcast_to(centres[None, :], (size, size))
  y = jnp.broadcast_to(centres[:, None], (size, size))
  return jnp.stack([x, y], axis=-1).astype(dtype)


def uv_to_pixels(uv: jax.Array, width: int, height: int, align_corners: bool = False):
  u, v = uv[..., 0], uv[..., 1]
  if align_corners:
    return (u + 1) / 2 * (width - 1), (v + 1) / 2 * (height - 1)
  return ((u + 1) * width - 1) / 2, ((v + 1) * height - 1) / 2


def sample_texture(texture: jax.Array, uv: jax.Array, align_corners: bool = False) -> jax.Array:
  """Bilinear sampling with zero padding.

  texture: (B, H, W, C), one per identity. uv: (B * T, Ho, Wo, 2), T frames per identity.
  Returns (B * T, Ho, Wo, C) in the texture's dtype. Differentiable with respect to both texture and uv.

  Coordinates, tap indices and weights are computed in at least float32 whatever the compute dtype: bfloat16
  holds integers exactly only up to 256, so a bfloat16 pixel coordinate is off by up to a pixel on a 256 px
  texture and a flat tap index (up to H * W) rounds past the end, where the gather reads NaN.
  """
  b, h, w, c = texture.shape
  frames, ho, wo, _ = uv.shape
  px, py = uv_to_pixels(at_least_float32(uv).reshape(b, -1, 2), w, h, align_corners)
  x0 = jnp.floor(px)
  y0 = jnp.floor(py)
  wx1 = px - x0
  wy1 = py - y0
  wx0 = 1.0 - wx1
  wy0 = 1.0 - wy1
  flat = texture.reshape(b, h * w, c)
  out = jnp.zeros((b, px.shape[1], c), texture.dtype)
  for dx, dy, weight in ((0, 0, wx0 * wy0), (1, 0, wx1 * wy0), (0, 1, wx0 * wy1), (1, 1, wx1 * wy1)):
    xi = x0 + dx
    yi = y0 + dy
    inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
    index = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).astype(jnp.int32)
    taps = jnp.take_along_axis(flat, index[..., None], axis=1)
    out = out + taps * jnp.where(inside, weight, 0.0)[..., None].astype(texture.dtype)
  return out.reshape(frames, ho, wo, c)

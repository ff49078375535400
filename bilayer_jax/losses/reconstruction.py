"""Pixel-space losses of stage 1 (docs/model.md §4): L1 on the low-frequency layer, mask BCE, warp regularizer."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bilayer_jax.nn.layers import at_least_float32


def l1(prediction, target):
  return jnp.mean(jnp.abs(at_least_float32(prediction) - at_least_float32(jax.lax.stop_gradient(target))))


def mask_bce(logits, target_mask):
  """Binary cross-entropy with logits against soft ground-truth masks, mean over all pixels."""
  logits = at_least_float32(logits)
  target = at_least_float32(jax.lax.stop_gradient(target_mask))
  return jnp.mean(jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits))))


def warp_regularizer(delta_uv):
  """Mean |delta uv| (weight 0 in the authors' scripts: off)."""
  return jnp.mean(jnp.abs(at_least_float32(delta_uv)))


def apply_mask(image, mask):
  """Background set to -1: x * m + (-1) * (1 - m)."""
  return image * mask + (-1.0) * (1.0 - mask)

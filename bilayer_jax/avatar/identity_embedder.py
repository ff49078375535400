"""Identity embedder (docs/model.md §2.1), run once per avatar.

Source image (background set to -1 by its mask) and source stickman -> six 8x8 embeddings, one per
generator block, at that block's output width. Embedding k is the *features* of decoder block k.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilayer_jax.nn.layers import EVAL, Conv, Mode
from bilayer_jax.nn.resblock import ResBlock


class IdentityEmbedder(nn.Module):
  first_features: int
  encoder_features: Sequence[int]
  decoder_features: Sequence[int]
  norm: str = 'none'
  spectral_norm: bool = True
  eps: float = 1e-7
  bn_momentum: float = 1.0
  axis_name: str | None = None
  downsample_mode: str = 'reduce_window'

  @nn.compact
  def __call__(self, inputs: jax.Array, mode: Mode = None) -> list[jax.Array]:
    """inputs: (B, H, W, 6) masked source image and stickman. Returns [E_0 .. E_{K-1}], (B, s, s, c_k)."""
    mode = mode or EVAL
    common = dict(norm=self.norm, spectral_norm=self.spectral_norm, eps=self.eps,
                  bn_momentum=self.bn_momentum, axis_name=self.axis_name,
                  downsample_mode=self.downsample_mode)
    h = Conv(self.first_features, 3, self.spectral_norm, self.eps, name='conv_in')(inputs, mode)
    for i, features in enumerate(self.encoder_features):
      h, _ = ResBlock(features, resize='down', name=f'encoder_{i}', **common)(h, None, mode)
    embeddings = []
    for i, features in enumerate(self.decoder_features):
      h, feats = ResBlock(features, resize='none', name=f'decoder_{i}', **common)(h, None, mode)
      embeddings.append(feats)
    return embeddings


def embedder_inputs(image: jax.Array, stickman: jax.Array | None, mask: jax.Array | None) -> jax.Array:
  """Background of the source set to -1 by its mask (if given), stickman appended (if given)."""
  if mask is not None:
    image = image * mask + (-1.0) * (1.0 - mask)
  if stickman is None:
    return image
  return jnp.concatenate([image, stickman], axis=-1)

"""Texture enhancer (docs/model.md §2.6, §6.1): learned refinement of the texture, run once per avatar.

Each of the unrolled steps re-renders the source from the current texture, takes the gradient of the
masked reconstruction error with respect to the texture (`jax.grad`, first order: treated as an input)
and lets the network propose an additive update tanh(net([T; g])).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilayer_jax.nn.layers import EVAL, Conv, Mode, leaky_relu
from bilayer_jax.nn.resblock import ResBlock
from bilayer_jax.nn.warp import sample_texture


class EnhancerNetwork(nn.Module):
  first_features: int
  down_features: Sequence[int]
  num_middle: int
  up_features: Sequence[int]
  upsample_mode: str = 'resize'
  downsample_mode: str = 'reduce_window'
  spectral_norm: bool = True
  eps: float = 1e-7

  @nn.compact
  def __call__(self, inputs: jax.Array, mode: Mode = None) -> jax.Array:
    """inputs: (B, H, W, 6) = [texture, gradient]. Returns the raw (pre-tanh) update (B, H, W, 3)."""
    mode = mode or EVAL
    common = dict(norm='none', spectral_norm=self.spectral_norm, eps=self.eps, upsample_mode=self.upsample_mode,
                  downsample_mode=self.downsample_mode)
    h = Conv(self.first_features, 3, self.spectral_norm, self.eps, name='conv_in')(inputs, mode)
    for i, width in enumerate(self.down_features):
      h, _ = ResBlock(width, resize='down', name=f'down_{i}', **common)(h, None, mode)
    width = h.shape[-1]
    for i in range(self.num_middle):
      h, _ = ResBlock(width, resize='none', name=f'middle_{i}', **common)(h, None, mode)
    for i, width in enumerate(self.up_features):
      h, _ = ResBlock(width, resize='up', name=f'up_{i}', **common)(h, None, mode)
    h = leaky_relu(h)
    return Conv(3, 3, self.spectral_norm, self.eps, name='conv_out')(h, mode)


def guiding_loss(texture, source_uv, source_low_freq, source_mask, source_image, loss_type='sse',
                 align_corners=False):
  """Masked re-rendering error of the source: 0.5 * sum of squares ('sse') or sum of abs ('l1')."""
  rendered = source_low_freq + sample_texture(texture, source_uv, align_corners)
  if source_mask is not None:
    rendered = rendered * source_mask + (-1.0) * (1.0 - source_mask)
  diff = rendered - source_image
  if loss_type == 'sse':
    return 0.5 * jnp.sum(jnp.square(diff))
  if loss_type == 'l1':
    return jnp.sum(jnp.abs(diff))
  raise ValueError(f'unknown guiding loss {loss_type!r}; expected sse or l1')


def enhance_texture(apply_network, texture, source_uv, source_low_freq, source_mask, source_image,
                    num_steps: int, loss_type: str = 'sse', align_corners: bool = False):
  """The unrolled refinement T_{i+1} = T_i + tanh(net([T_i; dL/dT_i])).

  apply_network: (B, H, W, 6) -> (B, H, W, 3). The source image is masked by the predicted source mask
  here, as in the reference; all source-side inputs are treated as constants.
  """
  const = jax.lax.stop_gradient
  source_uv, source_low_freq = const(source_uv), const(source_low_freq)
  if source_mask is not None:
    source_mask = const(source_mask)
    source_image = source_image * source_mask + (-1.0) * (1.0 - source_mask)
  source_image = const(source_image)
  grad_fn = jax.grad(guiding_loss)
  for _ in range(num_steps):
    g = const(grad_fn(const(texture), source_uv, source_low_freq, source_mask, source_image, loss_type,
                      align_corners))
    texture = texture + jnp.tanh(apply_network(jnp.concatenate([texture, g], axis=-1)))
  return texture

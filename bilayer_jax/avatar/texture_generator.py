"""Texture generator (docs/model.md §2.2): the pose-independent high-frequency layer, run once per avatar.

A learned constant tensor goes through upsampling residual blocks with ada_spade_bn norms and adaptive
skip convs (parameters from the texture projector), a final ada_spade_bn, LReLU and a tanh RGB head.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilayer_jax.nn.layers import EVAL, Conv, Mode, leaky_relu
from bilayer_jax.nn.norm import apply_norm, make_norm
from bilayer_jax.nn.resblock import ResBlock


class TextureGenerator(nn.Module):
  input_size: int
  input_features: int
  block_features: Sequence[int]
  norm: str = 'ada_spade_bn'
  upsample_mode: str = 'resize'
  skip_before_upsample: bool = True
  spectral_norm: bool = True
  eps: float = 1e-7
  bn_momentum: float = 1.0
  axis_name: str | None = None

  @nn.compact
  def __call__(self, adaptive: dict, mode: Mode = None) -> jax.Array:
    """adaptive: from `generator_adaptive_params`, leading axis B. Returns textures (B, H, W, 3) in [-1, 1]."""
    mode = mode or EVAL
    b = adaptive['final_norm']['weight']['kernel'].shape[0] if self.norm == 'ada_spade_bn' \
        else adaptive['final_norm']['scale'].shape[0]
    learned = self.param('input', nn.initializers.normal(1.0),
                         (1, self.input_size, self.input_size, self.input_features))
    h = jnp.broadcast_to(learned, (b,) + learned.shape[1:])
    for i, features in enumerate(self.block_features):
      h, _ = ResBlock(
          features, resize='up', norm=self.norm, first_norm_plain=(i == 0), adaptive_skip=True,
          efficient_upsampling=False, skip_before_upsample=self.skip_before_upsample,
          upsample_mode=self.upsample_mode, spectral_norm=self.spectral_norm, eps=self.eps,
          bn_momentum=self.bn_momentum, axis_name=self.axis_name, name=f'block_{i}')(h, adaptive[f'block_{i}'], mode)
    final = make_norm(self.norm, False, self.eps, self.bn_momentum, self.axis_name, name='final_norm')
    h = leaky_relu(apply_norm(final, h, adaptive['final_norm'], mode))
    return jnp.tanh(Conv(3, 3, self.spectral_norm, self.eps, name='head')(h, mode))

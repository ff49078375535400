"""Discriminator (docs/model.md §2.5), training only: image + target stickman -> patch scores and the features of
every block (for feature matching)."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from bilayer_jax.nn.layers import EVAL, Conv, Mode, leaky_relu
from bilayer_jax.nn.norm import apply_norm, make_norm
from bilayer_jax.nn.resblock import ResBlock


class Discriminator(nn.Module):
  first_features: int
  block_features: Sequence[int]
  num_down: int
  norm: str = 'bn'
  spectral_norm: bool = True
  eps: float = 1e-7
  bn_momentum: float = 1.0
  axis_name: str | None = None
  downsample_mode: str = 'reduce_window'

  @nn.compact
  def __call__(self, inputs: jax.Array, mode: Mode = None):
    """inputs: (N, H, W, 6). Returns scores (N, s, s, 1) and a list of block features."""
    mode = mode or EVAL
    common = dict(norm=self.norm, spectral_norm=self.spectral_norm, eps=self.eps,
                  bn_momentum=self.bn_momentum, axis_name=self.axis_name,
                  downsample_mode=self.downsample_mode)
    h = Conv(self.first_features, 3, self.spectral_norm, self.eps, name='conv_in')(inputs, mode)
    features = []
    for i, width in enumerate(self.block_features):
      resize = 'down' if i < self.num_down else 'none'
      h, feats = ResBlock(width, resize=resize, name=f'block_{i}', **common)(h, None, mode)
      features.append(feats)
    final = make_norm(self.norm, False, self.eps, self.bn_momentum, self.axis_name, name='final_norm')
    h = leaky_relu(apply_norm(final, h, None, mode))
    scores = Conv(1, 1, self.spectral_norm, self.eps, name='head')(h, mode)
    return scores, features

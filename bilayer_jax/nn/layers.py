"""Plain layers of every network: convolution and dense layers with spectral normalization.

Spectral normalization (Miyato et al.) is stored explicitly: the un-normalized kernel is a parameter and
the power-iteration vectors `u` (output side) and `v` (input side) live in the `spectral` collection.
Both vectors use the PyTorch weight-matrix layout (out, in * kh * kw) so that the authors' checkpoints
load without permuting them. One power iteration runs per call when `mode.power_iteration` is set; the
stored vectors are used as they are otherwise. `fold_spectral_norm` turns a trained model into one with
plain kernels for inference and export.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class Mode(NamedTuple):
  """How the stateful layers behave in one call.

  batch_stats: BatchNorm normalizes with the batch's statistics and overwrites its running statistics.
  power_iteration: spectral normalization runs one power iteration and stores the new vectors.
  """
  batch_stats: bool
  power_iteration: bool

  def mutable(self) -> list[str]:
    """The variable collections that a call in this mode writes."""
    names = []
    if self.batch_stats:
      names.append('batch_stats')
    if self.power_iteration:
      names.append('spectral')
    return names


EVAL = Mode(batch_stats=False, power_iteration=False)
TRAIN = Mode(batch_stats=True, power_iteration=True)
# Standing statistics (docs/model.md §5.3): BatchNorm sees batches, spectral norm keeps its vectors.
STATS = Mode(batch_stats=True, power_iteration=False)

LEAKY_SLOPE = 0.2


def at_least_float32(x: jax.Array) -> jax.Array:
  """x in float32, or in its own dtype when that is wider: statistics, norms and losses of a bfloat16 step
  run in float32, and a float64 run (the training-parity check) stays float64 throughout."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def leaky_relu(x):
  return nn.leaky_relu(x, LEAKY_SLOPE)


def torch_uniform(bound: float):
  """PyTorch's default initializer for conv/linear weights and biases: U(-bound, bound)."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _l2_normalize(x, eps):
  # torch.nn.functional.normalize: x / max(||x||, eps)
  return x / jnp.maximum(jnp.linalg.norm(x), eps)


def kernel_to_matrix(kernel: jax.Array) -> jax.Array:
  """A conv (HWIO) or dense (IO) kernel as PyTorch's (out, in * kh * kw) matrix."""
  if kernel.ndim == 4:
    return jnp.transpose(kernel, (3, 2, 0, 1)).reshape(kernel.shape[3], -1)
  return kernel.T


def spectral_sigma(kernel, u, v):
  """sigma = u^T W v with the stored vectors (no gradient through u, v)."""
  w = kernel_to_matrix(kernel)
  return jnp.dot(jax.lax.stop_gradient(u), w @ jax.lax.stop_gradient(v))


class SpectralNormalizer(nn.Module):
  """Holds u, v for one kernel and returns kernel / sigma."""
  eps: float = 1e-7

  @nn.compact
  def __call__(self, kernel: jax.Array, mode: Mode) -> jax.Array:
    out_dim = kernel.shape[-1]
    in_dim = int(np.prod(kernel.shape[:-1]))

    def init_vector(size):
      key = self.make_rng('params')
      return _l2_normalize(jax.random.normal(key, (size,), jnp.float32), self.eps)

    u = self.variable('spectral', 'u', init_vector, out_dim)
    v = self.variable('spectral', 'v', init_vector, in_dim)
    u_value, v_value = u.value, v.value
    if mode.power_iteration and not self.is_initializing():
      w = jax.lax.stop_gradient(at_least_float32(kernel_to_matrix(kernel)))
      v_value = _l2_normalize(w.T @ u_value, self.eps)
      u_value = _l2_normalize(w @ v_value, self.eps)
      u.value, v.value = u_value, v_value
    sigma = spectral_sigma(at_least_float32(kernel), u_value, v_value)
    return kernel / sigma.astype(kernel.dtype)


class Conv(nn.Module):
  """Square convolution, stride 1, zero 'same' padding, with bias (docs/model.md §1.1), NHWC."""
  features: int
  kernel_size: int = 3
  spectral_norm: bool = True
  eps: float = 1e-7

  @nn.compact
  def __call__(self, x: jax.Array, mode: Mode = None) -> jax.Array:
    mode = mode or EVAL
    k = self.kernel_size
    in_features = x.shape[-1]
    bound = 1.0 / math.sqrt(in_features * k * k)
    kernel = self.param('kernel', torch_uniform(bound), (k, k, in_features, self.features))
    bias = self.param('bias', torch_uniform(bound), (self.features,))
    if self.spectral_norm:
      kernel = SpectralNormalizer(eps=self.eps, name='sn')(kernel, mode)
    pad = k // 2
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y + bias.astype(x.dtype)


class Dense(nn.Module):
  """Linear layer over the last axis, with bias and PyTorch's default initialization."""
  features: int
  spectral_norm: bool = True
  eps: float = 1e-7

  @nn.compact
  def __call__(self, x: jax.Array, mode: Mode = None) -> jax.Array:
    mode = mode or EVAL
    in_features = x.shape[-1]
    bound = 1.0 / math.sqrt(in_features)
    kernel = self.param('kernel', torch_uniform(bound), (in_features, self.features))
    bias = self.param('bias', torch_uniform(bound), (self.features,))
    if self.spectral_norm:
      kernel = SpectralNormalizer(eps=self.eps, name='sn')(kernel, mode)
    return x @ kernel.astype(x.dtype) + bias.astype(x.dtype)


class AdaptiveConv1x1(nn.Module):
  """A 1x1 convolution whose weights are predicted per identity (docs/model.md §1.4); it owns no parameters.

  x: (B * T, H, W, C_in) frames of B identities; kernel: (B, C_in, C_out); bias: (B, C_out).
  """

  @nn.compact
  def __call__(self, x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    b = kernel.shape[0]
    xb = x.reshape((b, -1) + x.shape[1:])
    y = jnp.einsum('bthwi,bio->bthwo', xb, kernel.astype(x.dtype)) + bias[:, None, None, None, :].astype(x.dtype)
    return y.reshape((-1,) + y.shape[2:])


def fold_spectral_norm(variables: dict) -> dict:
  """Replace every spectrally normalized kernel by kernel / sigma and drop the `spectral` collection.

  The result is the variables of the same network built with `spectral_norm=False`: this is what the
  authors' inference wrapper does once after loading (docs/model.md §1.7).
  """
  params = variables['params']
  spectral = variables.get('spectral', {})

  def fold(p, s):
    out = {}
    for name, value in p.items():
      if isinstance(value, dict):
        out[name] = fold(value, s.get(name, {}) if isinstance(s, dict) else {})
      else:
        out[name] = value
    if 'kernel' in p and isinstance(s, dict) and 'sn' in s:
      sigma = spectral_sigma(jnp.asarray(p['kernel'], jnp.float32), s['sn']['u'], s['sn']['v'])
      out['kernel'] = (jnp.asarray(p['kernel'], jnp.float32) / sigma).astype(jnp.asarray(p['kernel']).dtype)
    return out

  folded = {k: v for k, v in variables.items() if k not in ('params', 'spectral')}
  folded['params'] = fold(params, spectral)
  return folded

"""Projectors: identity embeddings -> the adaptive parameters of a generator (docs/model.md §1.5, §1.6).

For embedding k: adaptive average pooling to s x s (an exact nearest upsampling of the 8x8 map when s is
a multiple of 8, docs/model.md Q2), regrouping of the channel-first maps into rows, and a few MLPs of three linear
layers with no nonlinearity (docs/model.md Q4), each applied to every row. `texture_adaptive_params` and
`inference_adaptive_params` install the outputs into the generators' layers by the explicit mapping of
docs/model.md §1.6: embedding k drives norm2 and the skip conv of block k and norm1 of block k+1 (or the final norm).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilayer_jax.nn.layers import EVAL, Dense, Mode
from bilayer_jax.nn.resample import adaptive_avg_pool_nchw


class Projector(nn.Module):
  """plan: one dict per embedding with hidden, pool_size, rows, row_length and outputs (one per MLP)."""
  plan: Sequence[dict]
  spectral_norm: bool = True
  eps: float = 1e-7

  @nn.compact
  def __call__(self, embeddings: Sequence[jax.Array], mode: Mode = None) -> list[list[jax.Array]]:
    """embeddings: [(B, h, w, c_k)]. Returns per embedding a list of MLP outputs (B, rows, m)."""
    mode = mode or EVAL
    outputs = []
    for k, (embedding, spec) in enumerate(zip(embeddings, self.plan)):
      b = embedding.shape[0]
      # The reference regroups channel-first maps: keep its order so imported weights line up.
      pooled = adaptive_avg_pool_nchw(jnp.transpose(embedding, (0, 3, 1, 2)), spec['pool_size'])
      rows = pooled.reshape(b, spec['rows'], -1)
      group = []
      for j, m in enumerate(spec['outputs']):
        h = rows
        for layer, features in enumerate((spec['hidden'], spec['hidden'], m)):
          h = Dense(features, self.spectral_norm, self.eps, name=f'embedding_{k}_mlp_{j}_{layer}')(h, mode)
        group.append(h)
      outputs.append(group)
    return outputs


def _norm_params(out):
  """An MLP output (B, C, 2) as ada_bn parameters."""
  return {'scale': out[..., 0], 'shift': out[..., -1]}


def _conv_params(out):
  """An MLP output (B, C_out, C_in + 1) as an adaptive 1x1 conv: kernel (B, C_in, C_out), bias (B, C_out)."""
  return {'kernel': jnp.swapaxes(out[..., :-1], 1, 2), 'bias': out[..., -1]}


def _spade_params(out_weight, out_bias):
  return {'weight': _conv_params(out_weight), 'bias': _conv_params(out_bias)}


def generator_adaptive_params(groups: list[list[jax.Array]], norm: str) -> dict:
  """Install projector outputs into a generator's adaptive layers (docs/model.md §1.6)."""
  num_blocks = len(groups)
  adaptive = {f'block_{k}': {} for k in range(num_blocks)}
  for k, group in enumerate(groups):
    if norm == 'ada_spade_bn':
      first, skip, last = _spade_params(group[0], group[1]), _conv_params(group[2]), _spade_params(group[3], group[4])
    elif norm == 'ada_bn':
      first, skip, last = _norm_params(group[0]), _conv_params(group[1]), _norm_params(group[2])
    else:
      raise ValueError(f'unsupported adaptive norm {norm!r}')
    adaptive[f'block_{k}']['norm2'] = first
    adaptive[f'block_{k}']['skip'] = skip
    if k + 1 < num_blocks:
      adaptive[f'block_{k + 1}']['norm1'] = last
    else:
      adaptive['final_norm'] = last
  return adaptive

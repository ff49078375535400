"""The per-frame graph that serves every avatar: the avatar enters as runtime inputs (two-file export, part 2).

  keypoints (1, 2K), texture (1, H, W, 3), avatar_params (1, P)
      --trunk (JAX, jax2tf)--> delta_uv, low_freq[, mask_logits]
      --tf_warp on the runtime texture (warp.py)--> image (1, H, W, 3)[, mask (1, H, W, 1)]

fold.py bakes one avatar into the weights; here the same network keeps only what the checkpoint fixes
as constants (spectral norm and eval-mode BatchNorm statistics folded, in float64) and reads the rest
from `avatar_params`, one float32 vector that the per-avatar graph (avatar_graph.py) writes:
  - norm2 of every block follows conv1: the constant part 1 / sqrt(var + eps) and the mean fold into
    conv1's kernel and bias as before; the avatar's ada_bn gain (1 + w) and shift become a runtime
    per-channel multiply-add after it (g * conv(x, K s) + ..., the same sum as a baked kernel K s g);
  - norm1 (blocks after the first) and the final norm are a runtime per-channel (scale, shift), with the
    BatchNorm statistics already combined into them by the per-avatar graph;
  - the adaptive skip 1x1 convs are a FULLY_CONNECTED with runtime weights (the kernel stored (C_out, C_in))
    on the block input, run before the nearest upsampling as in fold.py.
LiteRT's GPU accelerator takes all of these forms (runtime MUL/ADD with per-channel broadcast, SLICE +
RESHAPE of the parameter vector's 4-D view, FULLY_CONNECTED with runtime weights, GATHER from a runtime
table). Not used: CONV_2D with runtime weights (phone delegates do not all take one) and BATCH_MATMUL
(x.reshape(-1, C) @ kernel becomes a BATCH_MATMUL of a 4-D and a 2-D operand, which the accelerator
computes wrongly: measured, about 20 dB).
`param_layout` is the vector's layout, `frame_params` the formula that fills it (one implementation for the
per-avatar graph and for packing a JAX avatar).
"""
from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax.export import fold as fold_lib
from bilayer_jax.export.warp import tf_warp
from bilayer_jax.nn.layers import fold_spectral_norm


def block_channels(model) -> list[tuple[int, int]]:
  """(C_in, C_out) of every block of the inference generator."""
  params = model.variables['inference_generator']['params']
  num = len([k for k in params if k.startswith('block_')])
  return [tuple(int(n) for n in np.shape(params[f'block_{i}']['conv1']['kernel'])[2:]) for i in range(num)]


def param_layout(channels) -> tuple[tuple[str, int], ...]:
  """(name, length) of every entry of avatar_params, in order. channels: block_channels(model)."""
  layout = []
  for i, (c_in, c_out) in enumerate(channels):
    if i:
      layout += [(f'block_{i}/norm1/scale', c_in), (f'block_{i}/norm1/shift', c_in)]
    layout += [(f'block_{i}/norm2/gain', c_out), (f'block_{i}/norm2/shift', c_out),
               (f'block_{i}/skip/kernel_t', c_out * c_in), (f'block_{i}/skip/bias', c_out)]  # kernel_t: (C_out, C_in)
  c = channels[-1][1]
  return tuple(layout + [('final_norm/scale', c), ('final_norm/shift', c)])


def norm_statistics(model) -> dict:
  """{norm name: (mean, 1 / sqrt(var + eps))} in float64 for the norms whose affine is per avatar."""
  stats = model.variables['inference_generator']['batch_stats']
  eps = model.config.eps
  out = {}
  for i in range(len(block_channels(model))):
    for norm in (('norm1', 'norm2') if i else ('norm2',)):
      s = stats[f'block_{i}'][norm]['bn']
      out[f'block_{i}/{norm}'] = (np.asarray(s['mean'], np.float64), 1.0 / np.sqrt(np.asarray(s['var'], np.float64) + eps))
  s = stats['final_norm']['bn']
  out['final_norm'] = (np.asarray(s['mean'], np.float64), 1.0 / np.sqrt(np.asarray(s['var'], np.float64) + eps))
  return out


def frame_params(statistics: dict, adaptive: dict, xp=jnp):
  """avatar_params (1, P) from the inference generator's adaptive parameters of one identity (the
  structure `generator_adaptive_params` returns, leading axis 1; a skip may hold 'kernel_t' (C_out, C_in)
  instead of 'kernel'). xp: jnp inside a graph, np for packing."""
  pieces = []

  def combined(name, ada):  # ada_bn after BatchNorm as one affine: x * s + t
    mean, inv = (xp.asarray(a, dtype) for a in statistics[name])
    s = (1.0 + ada['scale'].reshape(-1)) * inv
    return [s, ada['shift'].reshape(-1) - mean * s]

  dtype = adaptive['final_norm']['scale'].dtype
  num = len([k for k in adaptive if k.startswith('block_')])
  for i in range(num):
    ad = adaptive[f'block_{i}']
    if i:
      pieces += combined(f'block_{i}/norm1', ad['norm1'])
    pieces += [1.0 + ad['norm2']['scale'].reshape(-1), ad['norm2']['shift'].reshape(-1),
               _kernel_t(ad['skip'], xp).reshape(-1), ad['skip']['bias'].reshape(-1)]
  pieces += combined('final_norm', adaptive['final_norm'])
  # Concatenated as 4-D (1, 1, 1, n) pieces along channels, the form every GPU delegate takes.
  return xp.concatenate([piece.reshape(1, 1, 1, -1) for piece in pieces], axis=-1).reshape(1, -1)


def _kernel_t(skip, xp):
  return skip['kernel_t'] if 'kernel_t' in skip else xp.swapaxes(skip['kernel'], -1, -2)


def pack_params(model, inference_params) -> np.ndarray:
  """avatar_params (1, P) float32 of a JAX avatar (model.create_avatar(...).inference_params), in float64."""
  adaptive = {k: {n: {m: np.asarray(v, np.float64) for m, v in d.items()} for n, d in b.items()}
              if k.startswith('block_') else {m: np.asarray(v, np.float64) for m, v in b.items()}
              for k, b in inference_params.items()}
  if np.shape(adaptive['final_norm']['scale'])[0] != 1:
    raise ValueError('avatar_params hold one identity; this avatar has '
                     f'{np.shape(adaptive["final_norm"]["scale"])[0]}')
  return frame_params(norm_statistics(model), adaptive, np).astype(np.float32)


@flax.struct.dataclass
class SharedFrame:
  """The per-frame network without any avatar: the constants of `trunk`, float32."""
  dense: Any
  block0_norm1: Any          # (scale, shift): block 0's plain BatchNorm with its learned affine
  conv1: Any                 # per block (kernel, bias) with norm2's statistics folded in
  conv2: Any
  heads: Any
  frequencies: tuple = flax.struct.field(pytree_node=False, default=())
  layout: tuple = flax.struct.field(pytree_node=False, default=())
  embed_size: int = flax.struct.field(pytree_node=False, default=4)
  image_size: int = flax.struct.field(pytree_node=False, default=256)
  predict_mask: bool = flax.struct.field(pytree_node=False, default=True)
  align_corners: bool = flax.struct.field(pytree_node=False, default=False)

  @property
  def num_params(self) -> int:
    return sum(n for _, n in self.layout)

  @property
  def num_inputs(self) -> int:
    return int(self.dense[0][0].shape[0]) // (2 * len(self.frequencies) or 1)


def fold_shared(model) -> SharedFrame:
  """The avatar-independent part of the per-frame network of a `Bilayer` (ada_bn inference generator)."""
  config = model.config
  fold_lib.check_frame_model(model)
  gen = fold_spectral_norm(model.variables['inference_generator'])
  params, stats = gen['params'], gen['batch_stats']
  statistics = norm_statistics(model)
  channels = block_channels(model)
  conv1, conv2 = [], []
  for i in range(len(channels)):
    p = params[f'block_{i}']
    mean, inv = statistics[f'block_{i}/norm2']
    kernel, bias = np.asarray(p['conv1']['kernel'], np.float64), np.asarray(p['conv1']['bias'], np.float64)
    conv1.append(fold_lib._f32(kernel * inv, (bias - mean) * inv))
    conv2.append(fold_lib._f32(p['conv2']['kernel'], p['conv2']['bias']))
  norm1 = fold_lib._norm_affine(stats['block_0']['norm1'], config.eps, params['block_0']['norm1']['scale'],
                                params['block_0']['norm1']['bias'])
  dense, frequencies = fold_lib.fold_keypoints_mlp(model)
  return SharedFrame(
      dense=dense, block0_norm1=fold_lib._f32(*norm1), conv1=tuple(conv1), conv2=tuple(conv2),
      heads=fold_lib._f32(*fold_lib.stacked_heads(config, params)), frequencies=frequencies,
      layout=param_layout(channels), embed_size=config.inf_input_tensor_size, image_size=config.image_size,
      predict_mask=bool(config.inf_pred_segmentation), align_corners=bool(config.align_corners))


def split_params(layout, params) -> dict:
  """{name: (1, 1, 1, length) slice} of avatar_params (1, P): slices of its 4-D view, as phone GPU
  delegates take SLICE on 3-D and 4-D tensors only; ready to broadcast over channels."""
  flat = params.reshape(1, 1, 1, -1)
  out, offset = {}, 0
  for name, length in layout:
    out[name] = flat[..., offset:offset + length]
    offset += length
  return out


def trunk(shared: SharedFrame, poses, params, with_mask: bool = True) -> dict:
  """poses (N, 2K) of one avatar, params (1, P) its avatar_params. Returns delta_uv, low_freq (after tanh)
  [and mask_logits], as fold.trunk does for a baked avatar."""
  if with_mask and not shared.predict_mask:
    raise ValueError('this model has no segmentation head (inf_pred_segmentation=False)')
  p = split_params(shared.layout, params)
  h = fold_lib.pose_embedding(shared.dense, shared.frequencies, shared.embed_size, poses)
  for i, ((k1, b1), conv2) in enumerate(zip(shared.conv1, shared.conv2)):
    x = h
    if i:
      scale, shift = p[f'block_{i}/norm1/scale'], p[f'block_{i}/norm1/shift']
    else:
      scale, shift = shared.block0_norm1
    h = fold_lib._leaky_relu(x * scale + shift)
    h = fold_lib._conv(h, k1, b1) * p[f'block_{i}/norm2/gain'] + p[f'block_{i}/norm2/shift']
    h = fold_lib._conv(fold_lib._upsample(fold_lib._leaky_relu(h)), *conv2)
    kernel_t = p[f'block_{i}/skip/kernel_t'].reshape(-1, x.shape[-1])  # FULLY_CONNECTED with runtime weights
    skip = jax.lax.dot_general(x, kernel_t, (((3,), (1,)), ((), ()))) + p[f'block_{i}/skip/bias']
    h = h + fold_lib._upsample(skip)
  h = fold_lib._leaky_relu(h * p['final_norm/scale'] + p['final_norm/shift'])
  return fold_lib.head_outputs(h, shared.heads, with_mask, shared.predict_mask)


def tf_frame_function(shared: SharedFrame, with_mask: bool = False, warp: str = 'patches'):
  """A tf.function (keypoints (1, 2K), texture (1, H, W, 3), avatar_params (1, P)) ->
  {'image': (1, H, W, 3)[, 'mask': (1, H, W, 1)]}."""
  import tensorflow as tf
  from jax.experimental import jax2tf

  converted = jax2tf.convert(functools.partial(trunk, shared, with_mask=with_mask), with_gradient=False)

  def frame(keypoints, texture, avatar_params):
    out = converted(keypoints, avatar_params)
    # A reshape, not texture[0] (a shrink-axis STRIDED_SLICE, which GPU delegates reject).
    image = tf_warp(tf.reshape(texture, texture.shape[1:]), out['delta_uv'], shared.align_corners, warp)
    result = {'image': out['low_freq'] + image}
    if with_mask:
      result['mask'] = tf.sigmoid(out['mask_logits'])
    return result

  s = shared.image_size
  specs = [tf.TensorSpec((1, shared.num_inputs), tf.float32, name='keypoints'),
           tf.TensorSpec((1, s, s, 3), tf.float32, name='texture'),
           tf.TensorSpec((1, shared.num_params), tf.float32, name='avatar_params')]
  return tf.function(frame, input_signature=specs, autograph=False)

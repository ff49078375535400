"""Folding: a model + one avatar -> the per-frame network as plain arrays (export, step 1 of 3).

  Bilayer + Avatar --fold_frame--> FoldedFrame --trunk--> delta_uv, low_freq[, mask_logits]   (what TFLite runs)
                                               --render--> image[, mask]                       (trunk + warp, JAX)

After `create_avatar` the inference generator is an ordinary CNN of keypoints alone. Everything the
avatar and the eval-mode statistics fix is folded once, in float64, so that each frame runs convs,
per-channel multiply-adds, LReLUs and nearest upsamplings only:
  - spectral norm: kernel / sigma with the stored vectors (what eval mode computes);
  - norm2 of every block (running statistics, then the avatar's ada_bn scale/shift) follows conv1
    directly, so it becomes conv1's kernel and bias: K' = K s, b' = (b - mean) s + shift,
    s = (1 + w) / sqrt(var + eps);
  - norm1 and the final norm follow a residual sum and are followed by an LReLU, so they stay a
    per-channel multiply-add (block 0's norm1 is a plain BatchNorm with its learned affine);
  - the adaptive skip 1x1 convs become this avatar's plain 1x1 convs, run before the nearest
    upsampling (they commute with it, and run on a quarter of the pixels);
  - the three heads are one 3x3 conv with their output channels stacked (uv, rgb[, mask]);
  - the harmonic encoding is computed frequency-major (one scalar multiply per frequency, then a
    concatenation: no 3-D broadcast) with the first dense layer's rows permuted to match, and the
    last dense layer's outputs permuted so that its vector reshapes straight to NHWC instead of the
    reference's channel-major layout.
The texture stays a constant of the FoldedFrame; `render` samples it like `model.frame_outputs`.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax import model as model_lib
from bilayer_jax.nn.layers import LEAKY_SLOPE, fold_spectral_norm
from bilayer_jax.nn.warp import identity_grid, sample_texture


@flax.struct.dataclass
class FoldedFrame:
  """The per-frame computation of one avatar, as float32 arrays.

  dense: ((kernel, bias), ...) of the keypoints MLP; frequencies: the harmonic encoding's (or ()).
  blocks: per residual block a dict norm1 (scale, shift), conv1, conv2 (HWIO kernel, bias), skip (1x1).
  final_norm: (scale, shift); heads: the stacked 3x3 head conv; texture: (1, H, W, 3).
  """
  dense: Any
  blocks: Any
  final_norm: Any
  heads: Any
  texture: Any
  frequencies: tuple = flax.struct.field(pytree_node=False, default=())
  embed_size: int = flax.struct.field(pytree_node=False, default=4)
  predict_mask: bool = flax.struct.field(pytree_node=False, default=True)
  align_corners: bool = flax.struct.field(pytree_node=False, default=False)

  @property
  def image_size(self) -> int:
    return int(self.texture.shape[1])

  @property
  def num_inputs(self) -> int:
    return int(self.dense[0][0].shape[0]) // (2 * len(self.frequencies) or 1)


def _f64(x) -> np.ndarray:
  return np.asarray(x, np.float64)


def _f32(*arrays):
  return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


def _norm_affine(stats, eps, scale=None, shift=None, adaptive=None):
  """(s, t) with norm(x) = x * s + t for BatchNorm in eval mode, plain (scale/shift) or ada_bn (adaptive)."""
  inv = 1.0 / np.sqrt(_f64(stats['var']) + eps)
  if adaptive is not None:
    gain, offset = 1.0 + _f64(adaptive['scale'])[0], _f64(adaptive['shift'])[0]
  else:
    gain, offset = _f64(scale), _f64(shift)
  s = gain * inv
  return s, offset - _f64(stats['mean']) * s


def fold_keypoints_mlp(model) -> tuple[tuple, tuple]:
  """(dense, frequencies) of the keypoints MLP (avatar-independent): float32 (kernel, bias) per dense layer,
  the last one's outputs reordered to (s, s, C) and the first one's rows to the frequency-major encoding."""
  config = model.config
  emb = fold_spectral_norm(model.variables['keypoints_embedder'])['params']
  num_dense = len(emb)
  dense = [(_f64(emb[f'dense_{i}']['kernel']), _f64(emb[f'dense_{i}']['bias'])) for i in range(num_dense)]
  size, features = config.inf_input_tensor_size, config.inf_max_channels
  perm = np.arange(features * size * size).reshape(features, size, size).transpose(1, 2, 0).reshape(-1)
  kernel, bias = dense[-1]
  dense[-1] = (kernel[:, perm], bias[perm])
  frequencies = ()
  if config.pse_use_harmonic_enc:
    n, d = config.pse_num_harmonics, config.num_keypoints * 2
    frequencies = tuple(float(f) for f in np.asarray(np.pi * 2.0 ** np.arange(n), np.float32))
    # The model orders angles coordinate-major (d * n + j); `trunk` makes them frequency-major (j * d + d').
    rows = np.arange(d * n).reshape(d, n).T.reshape(-1)
    kernel, bias = dense[0]
    dense[0] = (kernel[np.concatenate([rows, rows + d * n])], bias)
  return tuple(_f32(k, b) for k, b in dense), frequencies


def stacked_heads(config, params) -> tuple:
  """The three heads as one 3x3 conv, output channels (uv, rgb[, mask]), float64."""
  head_names = ['head_uv', 'head_rgb'] + (['head_mask'] if config.inf_pred_segmentation else [])
  return (np.concatenate([_f64(params[h]['kernel']) for h in head_names], axis=-1),
          np.concatenate([_f64(params[h]['bias']) for h in head_names], axis=-1))


def check_frame_model(model) -> None:
  """ValueError unless the model has the per-frame networks with the ada_bn norms the export folds."""
  config = model.config
  if config.inf_norm_layer_type != 'ada_bn':
    raise ValueError(f'export folds ada_bn norms only (the paper setting); this model has '
                     f'inf_norm_layer_type={config.inf_norm_layer_type!r}')
  missing = [n for n in model_lib.FRAME_NETWORKS if n not in model.variables]
  if missing:
    raise ValueError(f'the model lacks the per-frame networks {missing}')


def fold_frame(model, avatar) -> FoldedFrame:
  """Fold a `Bilayer` model and one of its avatars (a single identity) into a `FoldedFrame`."""
  config = model.config
  check_frame_model(model)
  texture = np.asarray(avatar.texture, np.float32)
  if texture.ndim != 4 or texture.shape[0] != 1:
    raise ValueError(f'export takes an avatar of one identity; this one has texture shape {texture.shape} '
                     '(make it from one photo, or slice a batched avatar)')
  if texture.shape[1:] != (config.image_size, config.image_size, 3):
    raise ValueError(f'avatar texture {texture.shape[1:]} does not match the model size {config.image_size}')
  eps = config.eps
  gen_vars = fold_spectral_norm(model.variables['inference_generator'])
  params, stats = gen_vars['params'], gen_vars['batch_stats']
  adaptive = avatar.inference_params

  dense, frequencies = fold_keypoints_mlp(model)

  blocks = []
  num_blocks = len([k for k in params if k.startswith('block_')])
  for i in range(num_blocks):
    p, st, ad = params[f'block_{i}'], stats[f'block_{i}'], adaptive[f'block_{i}']
    if i == 0:
      norm1 = _norm_affine(st['norm1'], eps, p['norm1']['scale'], p['norm1']['bias'])
    else:
      norm1 = _norm_affine(st['norm1']['bn'], eps, adaptive=ad['norm1'])
    s2, t2 = _norm_affine(st['norm2']['bn'], eps, adaptive=ad['norm2'])
    conv1 = (_f64(p['conv1']['kernel']) * s2, _f64(p['conv1']['bias']) * s2 + t2)
    skip_kernel = _f64(ad['skip']['kernel'])[0]  # (C_in, C_out)
    blocks.append(dict(
        norm1=_f32(*norm1), conv1=_f32(*conv1),
        conv2=_f32(p['conv2']['kernel'], p['conv2']['bias']),
        skip=_f32(skip_kernel[None, None], _f64(ad['skip']['bias'])[0])))
  final_norm = _norm_affine(stats['final_norm']['bn'], eps, adaptive=adaptive['final_norm'])
  heads = stacked_heads(config, params)
  return FoldedFrame(
      dense=dense, blocks=tuple(blocks), frequencies=frequencies,
      final_norm=_f32(*final_norm), heads=_f32(*heads), texture=jnp.asarray(texture),
      embed_size=config.inf_input_tensor_size, predict_mask=bool(config.inf_pred_segmentation), align_corners=bool(config.align_corners))


# ----------------------------------------------------------------------------------------------------
# The per-frame function over folded arrays (plain JAX: what jax2tf converts)


def _leaky_relu(x):
  # This form converts to one LEAKY_RELU op (jnp.maximum(x, a * x) gives MUL + MAXIMUM).
  return jnp.where(x >= 0, x, LEAKY_SLOPE * x)


def _conv(x, kernel, bias):
  pad = kernel.shape[0] // 2
  y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((pad, pad), (pad, pad)),
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y + bias


def _upsample(x):
  # jax.image.resize 'nearest' is the form that converts to RESIZE_NEAREST_NEIGHBOR (docs/export.md).
  n, h, w, c = x.shape
  return jax.image.resize(x, (n, 2 * h, 2 * w, c), method='nearest')


def _no_tap(name, x):
  return x


def pose_embedding(dense, frequencies, embed_size: int, poses, tap=_no_tap):
  """The keypoints MLP over folded arrays: poses (N, 2K) -> (N, s, s, C) NHWC."""
  h = tap('input', poses)
  if frequencies:
    angles = tap('angles', jnp.concatenate([h * jnp.asarray(f, h.dtype) for f in frequencies], axis=-1))
    h = tap('harmonics', jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1))
  for i, (kernel, bias) in enumerate(dense):
    if i:
      h = _leaky_relu(h)
    h = tap(f'dense{i}', h @ kernel + bias)
  return h.reshape(h.shape[0], embed_size, embed_size, -1)


def head_outputs(h, heads, with_mask: bool, predict_mask: bool, tap=_no_tap) -> dict:
  """The stacked head conv on the final features: delta_uv, low_freq (after tanh)[, mask_logits]."""
  kernel, bias = heads
  if not with_mask and predict_mask:
    kernel, bias = kernel[..., :5], bias[:5]  # the mask head is the last output channel
  out = tap('heads', _conv(h, kernel, bias))
  result = dict(delta_uv=tap('delta_uv', jnp.tanh(out[..., 0:2])), low_freq=tap('low_freq', jnp.tanh(out[..., 2:5])))
  if with_mask:
    result['mask_logits'] = out[..., 5:6]
  return result


def trunk(folded: FoldedFrame, poses: jax.Array, with_mask: bool = True, tap=None) -> dict:
  """poses: (N, 2K) interleaved keypoints in [-1, 1]. Returns delta_uv (N, H, W, 2) and low_freq
  (N, H, W, 3), both after tanh, and mask_logits (N, H, W, 1) when with_mask (needs the mask head).

  tap(name, x) -> x sees every intermediate tensor ('angles', 'dense0', 'block0.conv1', ...) and returns
  what the trunk goes on with: tools/fp16_paper.py rounds one of them to float16 at a time to find where
  FP16 loses. None (the export) leaves the computation as it is.
  """
  if with_mask and not folded.predict_mask:
    raise ValueError('this model has no segmentation head (inf_pred_segmentation=False)')
  tap = tap or _no_tap
  h = pose_embedding(folded.dense, folded.frequencies, folded.embed_size, poses, tap)
  for i, block in enumerate(folded.blocks):
    x = h
    scale, shift = block['norm1']
    h = tap(f'block{i}.norm1', _leaky_relu(x * scale + shift))
    h = tap(f'block{i}.conv1', _leaky_relu(_conv(h, *block['conv1'])))  # conv1 carries norm2
    h = tap(f'block{i}.conv2', _conv(_upsample(h), *block['conv2']))
    h = tap(f'block{i}.out', h + tap(f'block{i}.skip', _upsample(_conv(x, *block['skip']))))
  scale, shift = folded.final_norm
  h = tap('final_norm', _leaky_relu(h * scale + shift))
  return head_outputs(h, folded.heads, with_mask, folded.predict_mask, tap)


def render(folded: FoldedFrame, poses: jax.Array, with_mask: bool = True, tap=None) -> dict:
  """The whole frame in JAX: trunk + warp of the texture + add. Returns image (N, H, W, 3) and mask."""
  out = trunk(folded, poses, with_mask, tap)
  grid = identity_grid(folded.image_size, out['delta_uv'].dtype)[None]
  high_freq = sample_texture(folded.texture, grid + out['delta_uv'], folded.align_corners)
  result = dict(image=out['low_freq'] + high_freq)
  if with_mask:
    result['mask'] = jax.nn.sigmoid(out['mask_logits'])
  return result

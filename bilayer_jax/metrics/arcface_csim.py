"""Identity preservation of generated frames: CSIM (ArcFace); its offline fallback is dlib_identity.py.

CSIM (docs/model.md §4, `--losses_test csim`): cosine similarity of the 512-D ArcFace IR-SE-50 embeddings of the
generated and the real frame, both aligned to 112x112 with the same similarity transform - the one that
maps the 5-point ArcFace template onto the *real* frame's landmarks (eye centres = means of 36-41 and
42-47, nose tip 30, mouth corners 48 and 54) - and bilinear resampling. The network is the standard
InsightFace PyTorch IR-SE-50 ("TreB1eN" `model_ir_se50.pth`: input_layer / body.{k} / output_layer);
its weights are not available offline, so `load_arcface_ir_se` reads a user-supplied file.
"""
from __future__ import annotations

import logging
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax.interop.state_dict import read_state_dict
from bilayer_jax.losses.vgg import name_list
from bilayer_jax.nn.warp import sample_texture

log = logging.getLogger(__name__)

IR50_UNITS = (3, 4, 14, 3)       # residual units per stage of IR-SE-50
STAGE_WIDTHS = (64, 128, 256, 512)
SE_REDUCTION = 16
EMBEDDING_SIZE = 512
ALIGNED_SIZE = 112
BN_EPS = 1e-5

# The standard ArcFace (InsightFace) 5-point template for 112x112 crops, (x, y) pixels: eye centres
# (image left, image right), nose tip, mouth corners.
ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)
# The authors' csim.py uses this variant: the same points stretched horizontally by 7/6 about x = 56.
AUTHORS_TEMPLATE_112 = np.array([[35.343697, 51.6963], [76.453766, 51.5014], [56.029396, 71.7366],
                                 [39.14085, 92.3655], [73.18488, 92.2041]], np.float32)


# ---------------------------------------------------------------------------------------------------------
# Alignment


def five_points(keypoints: jax.Array) -> jax.Array:
  """(..., 68, 2) landmarks -> (..., 5, 2): eye centres (36-41, 42-47), nose tip 30, mouth corners 48, 54."""
  if keypoints.shape[-2:] != (68, 2):
    raise ValueError(f'expected 68 landmarks (..., 68, 2), got {keypoints.shape}')
  return jnp.stack([keypoints[..., 36:42, :].mean(-2), keypoints[..., 42:48, :].mean(-2),
                    keypoints[..., 30, :], keypoints[..., 48, :], keypoints[..., 54, :]], axis=-2)


def similarity_transform(src: jax.Array, dst: jax.Array) -> jax.Array:
  """Least-squares similarity (rotation, uniform scale, translation) taking src points onto dst.

  src, dst: (..., N, 2). Returns (..., 2, 3) matrices A with dst ~ A @ [x, y, 1]. In 2-D a scaled
  rotation is a complex number z, and the least-squares z is sum(conj(s) d) / sum(|s|^2) over the
  centred points: the same transform as Umeyama's (skimage's 'similarity').
  """
  src_mean = src.mean(-2, keepdims=True)
  dst_mean = dst.mean(-2, keepdims=True)
  s = src - src_mean
  d = dst - dst_mean
  norm = jnp.sum(s * s, axis=(-2, -1))
  a = jnp.sum(s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1], -1) / norm
  b = jnp.sum(s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0], -1) / norm
  linear = jnp.stack([jnp.stack([a, -b], -1), jnp.stack([b, a], -1)], -2)
  shift = dst_mean[..., 0, :] - jnp.einsum('...ij,...j->...i', linear, src_mean[..., 0, :],
                                           precision=jax.lax.Precision.HIGHEST)
  return jnp.concatenate([linear, shift[..., None]], axis=-1)


def align_faces(images: jax.Array, keypoints: jax.Array, template=ARCFACE_TEMPLATE_112) -> jax.Array:
  """(B, H, W, C) frames + (B, 68, 2) landmarks in [-1, 1] -> (B, 112, 112, C) aligned faces.

  Pixel coordinates use the half-pixel convention on both sides (output pixel j covers [j, j + 1) of
  the template; landmark x in [-1, 1] is at (x + 1) W / 2), as the authors' affine_grid + grid_sample;
  bilinear sampling with zeros outside the frame.
  """
  _, h, w, _ = images.shape
  size = jnp.asarray([w, h], jnp.float32)
  landmarks = (five_points(keypoints.astype(jnp.float32)) + 1) / 2 * size
  matrix = similarity_transform(jnp.broadcast_to(jnp.asarray(template, jnp.float32), landmarks.shape),
                                landmarks)
  centres = jnp.arange(ALIGNED_SIZE, dtype=jnp.float32) + 0.5
  gx, gy = jnp.meshgrid(centres, centres)
  grid = jnp.stack([gx, gy, jnp.ones_like(gx)], -1)
  pixels = jnp.einsum('bij,hwj->bhwi', matrix, grid, precision=jax.lax.Precision.HIGHEST)
  return sample_texture(images, pixels / size * 2 - 1)


# ---------------------------------------------------------------------------------------------------------
# IR-SE-50


class PReLU(nn.Module):
  @nn.compact
  def __call__(self, x):
    alpha = self.param('alpha', nn.initializers.constant(0.25), (x.shape[-1],))
    return jnp.where(x >= 0, x, alpha * x)


def _batch_norm(name):
  return nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name=name)


def _conv(features, kernel, stride, name):
  pad = (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=False, name=name)


class SqueezeExcite(nn.Module):
  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(_conv(channels // SE_REDUCTION, 1, 1, 'fc1')(s))
    return x * nn.sigmoid(_conv(channels, 1, 1, 'fc2')(s))


class IRSEUnit(nn.Module):
  """Pre-activation residual unit: BN-conv-PReLU-conv(stride)-BN-SE, plus a (projected) shortcut."""
  width: int
  stride: int

  @nn.compact
  def __call__(self, x):
    if x.shape[-1] == self.width:
      # A 1x1 max pooling with stride: plain subsampling.
      shortcut = x[:, ::self.stride, ::self.stride]
    else:
      shortcut = _batch_norm('shortcut_bn')(_conv(self.width, 1, self.stride, 'shortcut_conv')(x))
    r = _batch_norm('bn1')(x)
    r = PReLU(name='prelu')(_conv(self.width, 3, 1, 'conv1')(r))
    r = _batch_norm('bn2')(_conv(self.width, 3, self.stride, 'conv2')(r))
    return SqueezeExcite(name='se')(r) + shortcut


class IRSEBackbone(nn.Module):
  """ArcFace IR-SE backbone in eval mode: (B, 112, 112, 3) RGB in [-1, 1] -> (B, 512) unit embeddings.

  units: residual units per stage ((3, 4, 14, 3) for IR-SE-50; fewer for quick tests).
  """
  units: tuple[int, ...] = IR50_UNITS

  @nn.compact
  def __call__(self, images):
    if images.shape[1:] != (ALIGNED_SIZE, ALIGNED_SIZE, 3):
      raise ValueError(f'IR-SE takes aligned (B, 112, 112, 3) faces, got {images.shape}')
    x = _conv(STAGE_WIDTHS[0], 3, 1, 'input_conv')(images)
    x = PReLU(name='input_prelu')(_batch_norm('input_bn')(x))
    k = 0
    for width, count in zip(STAGE_WIDTHS, self.units):
      for j in range(count):
        x = IRSEUnit(width, 2 if j == 0 else 1, name=f'body_{k}')(x)
        k += 1
    x = _batch_norm('output_bn')(x)
    # (Dropout is the identity in eval mode.) PyTorch flattens channel-first.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    x = nn.Dense(EMBEDDING_SIZE, name='output_dense')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name='output_bn1d')(x)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _arcface_layout(units: Sequence[int]) -> dict:
  """torch key -> (collection, our path, torch shape) for the TreB1eN IR-SE state dict."""
  layout = {}

  def conv(key, path, cout, cin, k):
    layout[f'{key}.weight'] = ('params', path + ('kernel',), (cout, cin, k, k))

  def bn(key, path, c):
    for name, collection, leaf in (('weight', 'params', 'scale'), ('bias', 'params', 'bias'),
                                   ('running_mean', 'batch_stats', 'mean'),
                                   ('running_var', 'batch_stats', 'var')):
      layout[f'{key}.{name}'] = (collection, path + (leaf,), (c,))

  def prelu(key, path, c):
    layout[f'{key}.weight'] = ('params', path + ('alpha',), (c,))

  conv('input_layer.0', ('input_conv',), STAGE_WIDTHS[0], 3, 3)
  bn('input_layer.1', ('input_bn',), STAGE_WIDTHS[0])
  prelu('input_layer.2', ('input_prelu',), STAGE_WIDTHS[0])
  k, cin = 0, STAGE_WIDTHS[0]
  for width, count in zip(STAGE_WIDTHS, units):
    for _ in range(count):
      body, path = f'body.{k}', (f'body_{k}',)
      if cin != width:
        conv(f'{body}.shortcut_layer.0', path + ('shortcut_conv',), width, cin, 1)
        bn(f'{body}.shortcut_layer.1', path + ('shortcut_bn',), width)
      bn(f'{body}.res_layer.0', path + ('bn1',), cin)
      conv(f'{body}.res_layer.1', path + ('conv1',), width, cin, 3)
      prelu(f'{body}.res_layer.2', path + ('prelu',), width)
      conv(f'{body}.res_layer.3', path + ('conv2',), width, width, 3)
      bn(f'{body}.res_layer.4', path + ('bn2',), width)
      conv(f'{body}.res_layer.5.fc1', path + ('se', 'fc1'), width // SE_REDUCTION, width, 1)
      conv(f'{body}.res_layer.5.fc2', path + ('se', 'fc2'), width, width // SE_REDUCTION, 1)
      k, cin = k + 1, width
  bn('output_layer.0', ('output_bn',), cin)
  spatial = ALIGNED_SIZE // 2 ** len(units)
  layout['output_layer.3.weight'] = ('params', ('output_dense', 'kernel'),
                                     (EMBEDDING_SIZE, cin * spatial * spatial))
  layout['output_layer.3.bias'] = ('params', ('output_dense', 'bias'), (EMBEDDING_SIZE,))
  bn('output_layer.4', ('output_bn1d',), EMBEDDING_SIZE)
  return layout


def load_arcface_ir_se(source, units: Sequence[int] = IR50_UNITS) -> dict:
  """Variables {'params', 'batch_stats'} of IRSEBackbone(units) from an InsightFace IR-SE state dict.

  source: the TreB1eN `model_ir_se50.pth` (or the authors' `pretrained_weights/csim/insight_face.pth`),
  an .npz, or a dict of arrays with the same keys. BatchNorm `num_batches_tracked` entries are ignored;
  missing or unknown tensors and wrong shapes are refused.
  """
  what = f'ArcFace IR-SE weights (units {tuple(units)})'
  state = read_state_dict(source, what)
  layout = _arcface_layout(units)
  used = {k for k in state if not k.endswith('num_batches_tracked')}
  missing, unexpected = set(layout) - used, used - set(layout)
  if missing or unexpected:
    detail = '; '.join(([f'missing {name_list(missing)}'] if missing else [])
                       + ([f'unexpected {name_list(unexpected)}'] if unexpected else []))
    raise ValueError(f'{what}: not an InsightFace IR-SE state dict of this depth: {detail}. '
                     '(Another depth (pass units), a plain IR model without SE, or keys with a prefix?)')
  wrong = [f'{k}: {tuple(state[k].shape)}, expected {shape}' for k, (_, _, shape) in layout.items()
           if tuple(state[k].shape) != shape]
  if wrong:
    raise ValueError(f'{what}: tensor shapes do not match: ' + '; '.join(wrong[:6]))
  variables: dict = {'params': {}, 'batch_stats': {}}
  for key, (collection, path, _) in layout.items():
    value = state[key].astype(np.float32)
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)       # OIHW -> HWIO
    elif path[-2:] == ('output_dense', 'kernel'):
      value = value.T                           # (out, in) -> (in, out)
    node = variables[collection]
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = np.ascontiguousarray(value)
  return variables


# ---------------------------------------------------------------------------------------------------------
# CSIM


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1))


def arcface_embeddings(variables: dict, images: jax.Array, keypoints: jax.Array,
                       units: Sequence[int] = IR50_UNITS, template=ARCFACE_TEMPLATE_112) -> jax.Array:
  """(B, 512) unit embeddings of (B, H, W, 3) frames in [-1, 1], aligned with (B, 68, 2) landmarks."""
  return _embed(variables, images, keypoints, jnp.asarray(template, jnp.float32), tuple(units))


def _embed_impl(variables, images, keypoints, template, units):
  # Full float32 convolutions: a metric should not change with the GPU's TF32 default.
  with jax.default_matmul_precision('float32'):
    faces = align_faces(images.astype(jnp.float32), keypoints, template)
    return IRSEBackbone(units).apply(variables, faces)


_embed = jax.jit(_embed_impl, static_argnums=4)


def csim(variables: dict, fake: jax.Array, real: jax.Array, keypoints: jax.Array,
         units: Sequence[int] = IR50_UNITS, template=ARCFACE_TEMPLATE_112, reduce: bool = True):
  """CSIM between generated and real frames (B, H, W, 3) in [-1, 1], both aligned with the real
  frames' landmarks `keypoints` (B, 68, 2) in [-1, 1]. Mean over the batch unless reduce=False."""
  if fake.shape != real.shape or fake.ndim != 4:
    raise ValueError(f'csim takes two (B, H, W, 3) batches of the same shape, got {fake.shape}, {real.shape}')
  if keypoints.shape != (fake.shape[0], 68, 2):
    raise ValueError(f'keypoints must be (B, 68, 2) = ({fake.shape[0]}, 68, 2), got {keypoints.shape}')
  both = _embed(variables, jnp.concatenate([fake, real], 0), jnp.concatenate([keypoints, keypoints], 0),
                jnp.asarray(template, jnp.float32), tuple(units))
  e_fake, e_real = jnp.split(both, 2, axis=0)
  per_image = cosine_similarity(e_fake, e_real)
  return jnp.mean(per_image) if reduce else per_image

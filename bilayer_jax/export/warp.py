"""The texture warp of the exported graph, in TensorFlow (export, step 2a: the graph).

The warp is written in TF, not JAX, because every JAX gather becomes GATHER_ND, which the GPU delegate
lacks (docs/export.md). It samples like `bilayer_jax.nn.warp.sample_texture` (bilinear, zero outside,
either align_corners convention) but fetches texel *patches* rather than four single texels, because
of two delegate facts (gpu_compat.py): every tensor but the CAST -> GATHER indices must be float, and with
--gpu_precision_loss_allowed those floats are FP16, which holds integers exactly only up to 2048. A
flat (H*W, 3) texture indexed by y * W + x would need float indices up to 65535 at 256x256: rounded in
FP16, rows below the 8th would read the wrong texels. So the texture is cut into at most 2048 blocks
of R x S texels (4 x 8 at 256x256), each stored as its (R + 1) x (S + 1) patch (one texel of overlap,
zero beyond the border); one GATHER with block indices < 2048 fetches every pixel's patch, which holds
its four bilinear taps, and tent weights relu(1 - |j - x|) pick and weight them (zero for taps outside
the texture). Pixel coordinates are split into the integer part the identity grid fixes and the part
delta_uv adds (t = delta * size / 2), so the weights come from t alone and keep FP16 precision near
the border too. Cost: (R+1)(S+1)*3 = 135 values gathered per pixel and a few 1x1 convolutions: on
one core of this CPU a 256x256 frame takes about 10 ms longer than with the plain four-texel warp
('taps', exact in float32; benchmarks/render_latency.py). So model_fp16.tflite (for a GPU in FP16)
uses 'patches' and model_fp32.tflite (CPU, or a GPU without precision loss) uses 'taps'; both are
switches.

The texture is a constant (numpy: one avatar baked in) or a graph input (a TF tensor: frame_graph.py,
one graph for every avatar). A runtime texture's patch table is built in the graph by one GATHER with
constant int32 indices (`patch_indices`): a copy, exact in FP16 too.
"""
from __future__ import annotations

import numpy as np

# FP16 represents every integer up to 2048 exactly: block indices stay below it.
MAX_EXACT_INDEX = 2048


def _warp_constants(size: int, align_corners: bool):
  """Per-pixel constants of the warp: integer and fractional parts of the identity grid in pixels,
  and the scale from delta_uv to pixels. x = base + delta * scale, as in `nn.warp.uv_to_pixels`."""
  # Identity grid u_i = (2i + 1) / size - 1, in pixels, from integers (exact, so floor() is safe):
  # align_corners=False: ((u + 1) * size - 1) / 2 = i;  True: (u + 1) / 2 * (size - 1).
  i = np.arange(size, dtype=np.float64)
  if align_corners:
    pixels, scale = (2 * i + 1) * (size - 1) / (2 * size), (size - 1) / 2.0
  else:
    pixels, scale = i, size / 2.0
  base = np.stack(np.broadcast_arrays(pixels[None, :], pixels[:, None]), axis=-1)[None]  # (1, H, W, 2) as (x, y)
  base_int = np.floor(base)
  return base_int.astype(np.float32), (base - base_int).astype(np.float32), np.float32(scale)


def patch_shape(height: int, width: int, max_blocks: int = MAX_EXACT_INDEX) -> tuple[int, int]:
  """Block size (R, S), powers of two, with at most max_blocks blocks and the smallest patch."""
  options = [(r, s) for r in (2 ** k for k in range(height.bit_length())) if height % r == 0
             for s in (2 ** k for k in range(width.bit_length())) if width % s == 0
             if (height // r) * (width // s) <= max_blocks]
  if not options:
    raise ValueError(f'no block size fits a {height}x{width} texture into {max_blocks} blocks')
  return min(options, key=lambda rs: ((rs[0] + 1) * (rs[1] + 1), abs(rs[0] - rs[1])))


def patch_table(texture: np.ndarray, r: int, s: int) -> np.ndarray:
  """(blocks, C * (R+1) * (S+1)): block (by, bx) at row by * (W / S) + bx holds texels
  [by*R, by*R + R] x [bx*S, bx*S + S] channel-major, zero beyond the texture."""
  h, w, c = texture.shape
  padded = np.zeros((h + 1, w + 1, c), np.float32)
  padded[:h, :w] = texture
  ys = (np.arange(h // r) * r)[:, None] + np.arange(r + 1)[None]
  xs = (np.arange(w // s) * s)[:, None] + np.arange(s + 1)[None]
  patches = padded[ys[:, None, :, None], xs[None, :, None, :]]  # (by, bx, R+1, S+1, C)
  return np.ascontiguousarray(patches.transpose(0, 1, 4, 2, 3).reshape((h // r) * (w // s), -1))


def patch_indices(height: int, width: int, channels: int, r: int, s: int) -> np.ndarray:
  """int32 indices (blocks, C * (R+1) * (S+1)) such that patch_table(texture) equals
  concat([0], texture channel-major flat)[indices]: index 0 is the zero beyond the texture."""
  flat = 1 + np.arange(height * width * channels, dtype=np.float64).reshape(channels, height, width)
  return patch_table(flat.transpose(1, 2, 0), r, s).astype(np.int32)


def _tf_patch_table(texture, r: int, s: int, dtype):
  """The patch table of a constant (numpy) or runtime (TF tensor) (H, W, C) texture."""
  import tensorflow as tf

  if isinstance(texture, np.ndarray):
    return tf.constant(patch_table(np.asarray(texture, np.float32), r, s), dtype)
  h, w, c = (int(n) for n in texture.shape)
  source = tf.concat([tf.zeros((1, 1), texture.dtype),
                      tf.reshape(tf.transpose(texture, [2, 0, 1]), (h * w * c, 1))], axis=0)
  indices = patch_indices(h, w, c, r, s)
  table = tf.gather(source, tf.constant(indices.reshape(-1)))
  return tf.cast(tf.reshape(table, indices.shape), dtype)  # no op when the dtypes agree


def _tf_flat_texture(texture, dtype):
  import tensorflow as tf

  h, w, c = (int(n) for n in texture.shape)
  if isinstance(texture, np.ndarray):
    return tf.constant(np.asarray(texture, np.float32).reshape(h * w, c), dtype)
  return tf.reshape(texture, (h * w, c))


def _conv1x1(x, kernel):
  import tensorflow as tf
  return tf.nn.conv2d(x, tf.constant(kernel[None, None], x.dtype), 1, 'VALID')


WARPS = ('patches', 'taps')


def tf_warp(texture: np.ndarray, delta_uv, align_corners: bool = False, method: str = 'patches',
            max_blocks: int = MAX_EXACT_INDEX):
  """Bilinear sampling with zero padding of an (H, W, C) texture (numpy constant or TF tensor) at identity
  grid + delta_uv.

  delta_uv: (1, H, W, 2) TF tensor (x, y), float32 or float16. Only float tensors until a CAST of the
  indices into GATHER. method 'patches': exact in FP16 arithmetic (block indices < max_blocks; see the
  module docstring); 'taps': four GATHERs of single texels from the flat (H*W, C) texture, about ten
  times cheaper on a CPU, but its float indices reach H*W - 1, exact in float32 only.
  """
  import tensorflow as tf

  h, w, channels = (int(n) for n in texture.shape)
  if h != w or tuple(delta_uv.shape[1:3]) != (h, w):
    raise ValueError(f'expected a square texture and delta_uv of its size, got {texture.shape}, {delta_uv.shape}')
  if method not in WARPS:
    raise ValueError(f'unknown warp {method!r}; expected one of {WARPS}')
  dtype = delta_uv.dtype
  base_int, base_frac, scale = _warp_constants(h, align_corners)
  t = delta_uv * float(scale)
  if np.any(base_frac):
    t = t + tf.constant(base_frac, dtype)
  floor = tf.floor(t)
  corner = floor + tf.constant(base_int, dtype)  # (x0, y0): exact integers
  if method == 'taps':
    return _tap_warp(texture, corner, t - floor)
  r, s = patch_shape(h, w, max_blocks)
  taps = (r + 1) * (s + 1)
  block = tf.floor(tf.clip_by_value(corner, 0.0, float(h - 1)) * tf.constant([1.0 / s, 1.0 / r], dtype))
  local = (corner - block * tf.constant([float(s), float(r)], dtype)) + (t - floor)  # position inside the patch
  # Tents relu(1 - |j - x|) over the patch's S+1 columns, then its R+1 rows: bilinear weights of the
  # two taps a coordinate falls between, zero elsewhere (and for taps beyond the texture).
  spread = np.zeros((2, s + r + 2), np.float32)
  spread[0, :s + 1] = 1.0
  spread[1, s + 1:] = 1.0
  offsets = np.concatenate([np.arange(s + 1), np.arange(r + 1)]).astype(np.float32)
  tents = tf.nn.relu(1.0 - tf.abs(_conv1x1(local, spread) - tf.constant(offsets, dtype)))
  # Weight of patch entry (row, col) = tent_y[row] * tent_x[col] (0/1 1x1 convolutions pick them),
  # the same for every channel of the channel-major patch.
  entry = np.arange(taps)
  expand_x = (np.arange(s + r + 2)[:, None] == (entry % (s + 1))[None]).astype(np.float32)
  expand_y = (np.arange(s + r + 2)[:, None] == (s + 1 + entry // (s + 1))[None]).astype(np.float32)
  weights = _conv1x1(tents, expand_x) * _conv1x1(tents, expand_y)
  if channels > 1:
    weights = tf.tile(weights, [1, 1, 1, channels])
  index = block[..., 1:2] * float(w // s) + block[..., 0:1]
  index = tf.cast(tf.reshape(index, [-1]), tf.int32)
  table = _tf_patch_table(texture, r, s, dtype)
  patches = tf.reshape(tf.gather(table, index), (1, h, w, channels * taps))
  total = (np.arange(channels * taps)[:, None] // taps == np.arange(channels)[None]).astype(np.float32)
  return _conv1x1(patches * weights, total)


def _tap_warp(texture: np.ndarray, corner, frac):
  """The four taps (x0 or x0 + 1, y0 or y0 + 1), each read by a GATHER on the flat texture."""
  import tensorflow as tf

  h, w, channels = (int(n) for n in texture.shape)
  dtype = corner.dtype
  limit = float(h - 1)

  def inside(c):  # each comparison feeds one CAST, the form the delegate fuses
    return tf.cast(c >= 0.0, dtype) * tf.cast(c <= limit, dtype)

  c1 = corner + 1.0
  a0, a1 = (1.0 - frac) * inside(corner), frac * inside(c1)
  i0, i1 = tf.clip_by_value(corner, 0.0, limit), tf.clip_by_value(c1, 0.0, limit)
  flat = _tf_flat_texture(texture, dtype)
  out = None
  for row, wy in ((i0[..., 1:2] * float(w), a0[..., 1:2]), (i1[..., 1:2] * float(w), a1[..., 1:2])):
    for col, wx in ((i0[..., 0:1], a0[..., 0:1]), (i1[..., 0:1], a1[..., 0:1])):
      index = tf.cast(tf.reshape(row + col, [-1]), tf.int32)
      term = tf.reshape(tf.gather(flat, index), (1, h, w, channels)) * (wx * wy)
      out = term if out is None else out + term
  return out

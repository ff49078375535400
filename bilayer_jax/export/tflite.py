"""The per-frame network of one avatar as FP32 and FP16 TFLite models, checked and measured (export, step 2 of 3).

  FoldedFrame --jax2tf (native)--> trunk: keypoints (1, 2K) -> delta_uv, low_freq[, mask_logits]
              + TF warp (GATHER on the constant texture) + add [+ sigmoid]      (one tf.function)
              --TFLiteConverter--> model_fp32.tflite, model_fp16.tflite
              --gpu_compat.check, interpreter vs model.render, latency--> report.json

The warp is written in TF, not JAX, because every JAX gather becomes GATHER_ND, which the GPU delegate
lacks (export-notes.md). It samples like `bilayer_jax.nn.warp.sample_texture` (bilinear, zero outside,
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

Measuring on a phone (the numbers here are CPU-only; no GPU delegate runs on this machine):
  adb push model_fp16.tflite /data/local/tmp/
  adb push benchmark_model /data/local/tmp/     # LiteRT's prebuilt benchmark binary for android_arm64
  adb shell /data/local/tmp/benchmark_model --graph=/data/local/tmp/model_fp16.tflite \\
      --use_gpu=true --gpu_precision_loss_allowed=true --num_runs=100 --warmup_runs=10
Add --enable_op_profiling=true to see per-op times and whether every op ran on the GPU delegate.
"""
from __future__ import annotations

import functools
import importlib
import json
import logging
import math
import os
import pathlib
import statistics
import time

import numpy as np

from bilayer_jax.export import fold as fold_lib
from bilayer_jax.export import gpu_compat

log = logging.getLogger(__name__)

FILES = ('model_fp32.tflite', 'model_fp16.tflite', 'report.json')
# PSNR of images in [-1, 1]: the peak-to-peak range is 2.
PSNR_PEAK = 2.0


class GpuIncompatibleError(ValueError):
  """The converted graph breaks the GPU delegate's rules (see gpu_compat)."""


# ----------------------------------------------------------------------------------------------------
# The TF graph: converted trunk + warp


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


def _conv1x1(x, kernel):
  import tensorflow as tf
  return tf.nn.conv2d(x, tf.constant(kernel[None, None], x.dtype), 1, 'VALID')


WARPS = ('patches', 'taps')


def tf_warp(texture: np.ndarray, delta_uv, align_corners: bool = False, method: str = 'patches',
            max_blocks: int = MAX_EXACT_INDEX):
  """Bilinear sampling with zero padding of a constant (H, W, C) texture at identity grid + delta_uv.

  delta_uv: (1, H, W, 2) TF tensor (x, y), float32 or float16. Only float tensors until a CAST of the
  indices into GATHER. method 'patches': exact in FP16 arithmetic (block indices < max_blocks; see the
  module docstring); 'taps': four GATHERs of single texels from the flat (H*W, C) texture, about ten
  times cheaper on a CPU, but its float indices reach H*W - 1, exact in float32 only.
  """
  import tensorflow as tf

  h, w, channels = texture.shape
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
  table = tf.constant(patch_table(np.asarray(texture, np.float32), r, s), dtype)
  patches = tf.reshape(tf.gather(table, index), (1, h, w, channels * taps))
  total = (np.arange(channels * taps)[:, None] // taps == np.arange(channels)[None]).astype(np.float32)
  return _conv1x1(patches * weights, total)


def _tap_warp(texture: np.ndarray, corner, frac):
  """The four taps (x0 or x0 + 1, y0 or y0 + 1), each read by a GATHER on the flat texture."""
  import tensorflow as tf

  h, w, channels = texture.shape
  dtype = corner.dtype
  limit = float(h - 1)

  def inside(c):  # each comparison feeds one CAST, the form the delegate fuses
    return tf.cast(c >= 0.0, dtype) * tf.cast(c <= limit, dtype)

  c1 = corner + 1.0
  a0, a1 = (1.0 - frac) * inside(corner), frac * inside(c1)
  i0, i1 = tf.clip_by_value(corner, 0.0, limit), tf.clip_by_value(c1, 0.0, limit)
  flat = tf.constant(np.asarray(texture, np.float32).reshape(h * w, channels), dtype)
  out = None
  for row, wy in ((i0[..., 1:2] * float(w), a0[..., 1:2]), (i1[..., 1:2] * float(w), a1[..., 1:2])):
    for col, wx in ((i0[..., 0:1], a0[..., 0:1]), (i1[..., 0:1], a1[..., 0:1])):
      index = tf.cast(tf.reshape(row + col, [-1]), tf.int32)
      term = tf.reshape(tf.gather(flat, index), (1, h, w, channels)) * (wx * wy)
      out = term if out is None else out + term
  return out


def tf_frame_function(folded: fold_lib.FoldedFrame, with_mask: bool = False, warp: str = 'patches'):
  """A tf.function keypoints (1, 2K) -> {'image': (1, H, W, 3)[, 'mask': (1, H, W, 1)]}."""
  import tensorflow as tf
  from jax.experimental import jax2tf

  trunk = jax2tf.convert(functools.partial(fold_lib.trunk, folded, with_mask=with_mask), with_gradient=False)
  texture = np.asarray(folded.texture, np.float32)[0]

  def frame(keypoints):
    out = trunk(keypoints)
    result = {'image': out['low_freq'] + tf_warp(texture, out['delta_uv'], folded.align_corners, warp)}
    if with_mask:
      result['mask'] = tf.sigmoid(out['mask_logits'])
    return result

  spec = tf.TensorSpec((1, folded.num_inputs), tf.float32, name='keypoints')
  return tf.function(frame, input_signature=[spec], autograph=False)


def to_tflite(function, fp16: bool) -> bytes:
  """A tf.function -> .tflite bytes with builtin ops only; fp16 stores weights as float16 (+ DEQUANTIZE)."""
  import tensorflow as tf

  converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], function)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if fp16:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
  return bytes(converter.convert())


def convert(folded: fold_lib.FoldedFrame, with_mask: bool = False, fp32_warp: str = 'taps',
            fp16_warp: str = 'patches') -> tuple[bytes, bytes]:
  """(FP32 bytes, FP16 bytes). By default the FP32 file samples with 'taps' (exact in float32, cheap on
  a CPU) and the FP16 file, meant for a GPU computing in FP16, with 'patches' (see tf_warp)."""
  return (to_tflite(tf_frame_function(folded, with_mask, fp32_warp), fp16=False),
          to_tflite(tf_frame_function(folded, with_mask, fp16_warp), fp16=True))


# ----------------------------------------------------------------------------------------------------
# Running .tflite files


def interpreter_backend() -> tuple[str, type]:
  """(name, Interpreter class): ai-edge-litert, else tflite-runtime, else TensorFlow's."""
  for module, name in (('ai_edge_litert.interpreter', 'ai_edge_litert'),
                       ('tflite_runtime.interpreter', 'tflite_runtime')):
    try:
      return name, importlib.import_module(module).Interpreter
    except ImportError:
      pass
  import tensorflow as tf
  return 'tensorflow', tf.lite.Interpreter


class TFLiteFrame:
  """A converted frame model in an interpreter: __call__(keypoints (1, 2K)) -> {'image', ['mask']}."""

  def __init__(self, model: bytes, num_threads: int = 1):
    self.backend, interpreter_class = interpreter_backend()
    self.interpreter = interpreter_class(model_content=model, num_threads=num_threads)
    self.interpreter.allocate_tensors()
    inputs = self.interpreter.get_input_details()
    if len(inputs) != 1:
      raise ValueError(f'expected one input (keypoints), found {len(inputs)}')
    self._input = inputs[0]['index']
    self._outputs = {}
    for detail in self.interpreter.get_output_details():
      channels = int(detail['shape'][-1])
      name = {3: 'image', 1: 'mask'}.get(channels)
      if name is None or name in self._outputs:
        raise ValueError(f'unexpected output {detail["name"]} of shape {detail["shape"]}')
      self._outputs[name] = detail['index']

  def set_input(self, keypoints):
    self.interpreter.set_tensor(self._input, np.asarray(keypoints, np.float32).reshape(1, -1))

  def invoke(self):
    self.interpreter.invoke()

  def __call__(self, keypoints) -> dict:
    self.set_input(keypoints)
    self.invoke()
    return {name: self.interpreter.get_tensor(index).copy() for name, index in self._outputs.items()}


def latency_ms(model: bytes, num_threads: int, runs: int, warmup: int = 3) -> float:
  """Median wall time of one invoke, in milliseconds (fixed input; interpreter with num_threads)."""
  frame = TFLiteFrame(model, num_threads)
  frame.set_input(np.zeros((1, frame.interpreter.get_input_details()[0]['shape'][-1]), np.float32))
  for _ in range(warmup):
    frame.invoke()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    frame.invoke()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def psnr(a, b, peak: float = PSNR_PEAK) -> float:
  mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
  return math.inf if mse == 0 else 10.0 * math.log10(peak ** 2 / mse)


def fp16_arithmetic_images(folded: fold_lib.FoldedFrame, keypoints, warp: str = 'patches') -> np.ndarray:
  """Images (N, H, W, 3) computed in float16 throughout: the folded trunk in JAX float16, then the TF warp
  and the add in float16. The CPU interpreter runs FP16 files in float32 (only the weights are rounded);
  a GPU delegate allowed to lose precision also stores activations in FP16: this emulates that."""
  import jax
  import jax.numpy as jnp
  import tensorflow as tf

  half = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float16), folded)
  trunk = jax.jit(functools.partial(fold_lib.trunk, with_mask=False))
  texture = np.asarray(half.texture)[0]
  images = []
  for k in np.asarray(keypoints, np.float32):
    out = trunk(half, jnp.asarray(k.reshape(1, -1), jnp.float16))
    high_freq = tf_warp(texture, tf.constant(np.asarray(out['delta_uv'])), folded.align_corners, warp)
    images.append((tf.constant(np.asarray(out['low_freq'])) + high_freq).numpy()[0].astype(np.float32))
  return np.stack(images)


def _image_errors(images, reference) -> dict:
  per_pose = [psnr(images[i], reference[i]) for i in range(len(images))]
  return dict(max_abs_image=float(np.abs(images - reference).max()),
              psnr_db_min=float(min(per_pose)), psnr_db_mean=float(np.mean(per_pose)))


def compare_with_jax(model, avatar, fp32: bytes, fp16: bytes, keypoints, folded=None,
                     fp16_warp: str = 'patches') -> dict:
  """Accuracy of both files against `model.render` (float32 JAX) on keypoints (N, K, 2); with the
  FoldedFrame, also of the float16-arithmetic emulation of the FP16 graph (`fp16_arithmetic_images`)."""
  keypoints = np.asarray(keypoints, np.float32)
  reference = model.render(avatar, keypoints[None] if avatar.batched else keypoints)
  ref_image = np.asarray(reference['image']).reshape(len(keypoints), *reference['image'].shape[-3:])
  ref_mask = np.asarray(reference['mask']).reshape(len(keypoints), *reference['mask'].shape[-3:]) \
      if 'mask' in reference else None
  runs = {name: TFLiteFrame(data) for name, data in (('fp32', fp32), ('fp16', fp16))}
  result = {'poses': int(len(keypoints))}
  for name, frame in runs.items():
    images, masks = [], []
    for k in keypoints:
      out = frame(k.reshape(1, -1))
      images.append(out['image'][0])
      if 'mask' in out:
        masks.append(out['mask'][0])
    entry = _image_errors(np.stack(images), ref_image)
    if masks:
      entry['max_abs_mask'] = float(np.abs(np.stack(masks) - ref_mask).max())
    result[name] = entry
  if folded is not None:
    emulated = fp16_arithmetic_images(folded, keypoints, fp16_warp)
    result['fp16_arithmetic_emulated'] = _image_errors(emulated, ref_image)
  return result


# ----------------------------------------------------------------------------------------------------
# Export


def _random_keypoints(num: int, seed: int, num_keypoints: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.uniform(-0.8, 0.8, (num, num_keypoints, 2)).astype(np.float32)


def _versions() -> dict:
  out = {}
  for name in ('jax', 'tensorflow', 'ai_edge_litert'):
    try:
      module = importlib.import_module(name)
      out[name] = getattr(module, '__version__', 'unknown')
    except ImportError:
      pass
  return out


def export_avatar(model, avatar, out_dir, with_mask: bool = False, allow_cpu_ops: bool = False,
                  latency_runs: int = 50, keypoints=None, num_poses: int = 8, seed: int = 0,
                  fp32_tolerance: float = 1e-3, fp32_warp: str = 'taps', fp16_warp: str = 'patches') -> dict:
  """Write model_fp32.tflite, model_fp16.tflite and report.json for one avatar into out_dir.

  model: a `Bilayer`; avatar: from model.create_avatar (one identity). with_mask: also output the
  predicted foreground mask. keypoints: optional (N, 68, 2) poses for the accuracy check (real ones
  when you have them); otherwise num_poses random poses. latency_runs: invokes per measurement (median),
  at 1 and 2 interpreter threads; 0 skips timing. fp32_warp / fp16_warp: how each file samples the
  texture (tf_warp: 'patches' stays exact when a GPU computes in FP16, 'taps' is cheaper on a CPU).
  Refuses to overwrite any of the three files. Raises GpuIncompatibleError (nothing written) when
  the graph breaks the GPU delegate rules, unless allow_cpu_ops (then the violations are only
  reported: those ops would run on the CPU). Raises RuntimeError when the FP32 file differs from
  JAX by more than fp32_tolerance (a conversion bug, not a precision matter). Returns the report.
  """
  out_dir = pathlib.Path(out_dir)
  for warp in (fp32_warp, fp16_warp):
    if warp not in WARPS:
      raise ValueError(f'unknown warp {warp!r}; expected one of {WARPS}')
  existing = [name for name in FILES if (out_dir / name).exists()]
  if existing:
    raise FileExistsError(f'{out_dir} already holds {", ".join(existing)}; choose another folder or remove them')
  config = model.config
  if keypoints is None:
    keypoints, pose_source = _random_keypoints(num_poses, seed, config.num_keypoints), 'random'
  else:
    keypoints, pose_source = np.asarray(keypoints, np.float32), 'given'
    if keypoints.ndim != 3 or keypoints.shape[1:] != (config.num_keypoints, 2) or not len(keypoints):
      raise ValueError(f'keypoints must be (N, {config.num_keypoints}, 2), got {keypoints.shape}')

  start = time.perf_counter()
  folded = fold_lib.fold_frame(model, avatar)
  fp32, fp16 = convert(folded, with_mask, fp32_warp, fp16_warp)
  conversion_s = time.perf_counter() - start
  log.info('converted in %.1f s: FP32 %d bytes, FP16 %d bytes', conversion_s, len(fp32), len(fp16))

  verdicts = {'model_fp32.tflite': gpu_compat.check(fp32), 'model_fp16.tflite': gpu_compat.check(fp16)}
  compatible = all(v.compatible for v in verdicts.values())
  if not compatible:
    message = '\n'.join(f'{name}: {v.summary()}' for name, v in verdicts.items() if not v.compatible)
    if not allow_cpu_ops:
      raise GpuIncompatibleError(f'the exported graph is not GPU-compatible (pass allow_cpu_ops=True to '
                                 f'export anyway):\n{message}')
    log.warning('exporting a graph with ops the GPU delegate will leave to the CPU:\n%s', message)

  accuracy = compare_with_jax(model, avatar, fp32, fp16, keypoints, folded, fp16_warp)
  accuracy['pose_source'] = pose_source
  accuracy['psnr_peak'] = PSNR_PEAK
  if accuracy['fp32']['max_abs_image'] > fp32_tolerance:
    raise RuntimeError(f'the FP32 TFLite model differs from the JAX render by {accuracy["fp32"]["max_abs_image"]:.3g} '
                       f'(> {fp32_tolerance}): the conversion is wrong; nothing was written')
  latency = {}
  if latency_runs:
    for name, data in (('fp32', fp32), ('fp16', fp16)):
      latency[name] = {str(n): latency_ms(data, n, latency_runs) for n in (1, 2)}
  backend, _ = interpreter_backend()
  report = dict(
      model=dict(size=config.get('size', None), image_size=config.image_size, with_mask=with_mask,
                 inputs='keypoints (1, 136) float32, interleaved (x, y) in [-1, 1] crop coordinates',
                 outputs='image (1, H, W, 3) in about [-2, 2]'
                 + ('; mask (1, H, W, 1) in [0, 1]' if with_mask else '')),
      files={name: dict(bytes=len(data), warp=warp, ops=verdicts[name].histogram, gpu=verdicts[name].to_dict())
             for name, data, warp in (('model_fp32.tflite', fp32, fp32_warp),
                                      ('model_fp16.tflite', fp16, fp16_warp))},
      gpu_compatible=compatible, allow_cpu_ops=allow_cpu_ops,
      accuracy=accuracy,
      latency_ms=dict(runs=latency_runs, interpreter=backend, cpu_count=os.cpu_count(), **latency),
      conversion_s=conversion_s, versions=_versions())

  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  try:
    for name, data in (('model_fp32.tflite', fp32), ('model_fp16.tflite', fp16),
                       ('report.json', (json.dumps(report, indent=2) + '\n').encode())):
      with open(out_dir / name, 'xb') as f:  # 'x': never replace a file that appeared meanwhile
        written.append(out_dir / name)
        f.write(data)
  except BaseException:
    for path in written:  # only files this call created: no half-written export stays behind
      path.unlink(missing_ok=True)
    raise
  return report


def export_checkpoint(checkpoint_dir, source_image, source_keypoints, source_mask, out_dir,
                      enhance: bool | None = None, with_mask: bool = False, allow_cpu_ops: bool = False,
                      latency_runs: int = 50, keypoints=None, num_poses: int = 8, seed: int = 0,
                      fp32_warp: str = 'taps', fp16_warp: str = 'patches') -> dict:
  """Load a checkpoint, make the avatar of one source photo and export it (see export_avatar).

  source_image (H, W, 3) in [-1, 1], source_keypoints (68, 2) in [-1, 1], source_mask (H, W[, 1]) in [0, 1]
  or None (the source is then not masked before the identity embedder).
  enhance: run the texture enhancer; None = when the checkpoint has one. Without keypoints the accuracy
  check uses the source pose and num_poses - 1 jittered copies of it (real face layouts) instead of
  random points.
  """
  import bilayer_jax

  model = bilayer_jax.load(checkpoint_dir)
  if enhance is None:
    enhance = 'texture_enhancer' in model.variables
  avatar = model.create_avatar(source_image, source_keypoints, source_mask, enhance=enhance)
  if keypoints is None:
    source = np.asarray(source_keypoints, np.float32).reshape(1, -1, 2)
    rng = np.random.default_rng(seed)
    jitter = rng.normal(0.0, 0.02, (max(num_poses - 1, 0),) + source.shape[1:]).astype(np.float32)
    keypoints = np.clip(np.concatenate([source, source + jitter]), -1.0, 1.0)
  return export_avatar(model, avatar, out_dir, with_mask=with_mask, allow_cpu_ops=allow_cpu_ops,
                       latency_runs=latency_runs, keypoints=keypoints, seed=seed, fp32_warp=fp32_warp,
                       fp16_warp=fp16_warp)

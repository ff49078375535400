"""How far the converted files are from the JAX render (export, step 4): PSNR and max abs error per file,
and an emulation of a GPU computing the FP16 graph in float16 arithmetic."""
from __future__ import annotations

import functools

import numpy as np

from bilayer_jax.export import fold as fold_lib
from bilayer_jax.export.interpreter import TFLiteFrame
from bilayer_jax.export.warp import tf_warp
from bilayer_jax.metrics.psnr import psnr

# PSNR of images in [-1, 1]: the peak-to-peak range is 2.
PSNR_PEAK = 2.0
# The FP32 file against JAX float32, worst pose: below this the conversion is wrong. Float32 rounding alone
# stays far above it: at the paper size, with the authors' kind of weights and a rough texture, the two
# differ by up to 4e-3 (uv rounding times texel steps of up to 2) and still agree to 85-94 dB; a swapped
# channel or a dropped layer of the graph costs tens of dB (tests/test_export.py breaks the conversion so).
# A max-abs bound cannot tell the two apart: 1e-3 refused correct paper-size conversions.
FP32_MIN_PSNR_DB = 60.0
# The mask is a sigmoid of a head's logits, not warped: float32 leaves it within 1e-5 at the paper size.
FP32_MAX_ABS_MASK = 1e-3


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


def image_errors(images, reference) -> dict:
  """Max abs error and PSNR (min and mean over poses) of images (N, H, W, 3) against reference."""
  per_pose = [float(psnr(np.asarray(images[i], np.float32), np.asarray(reference[i], np.float32),
                                  data_range=PSNR_PEAK)) for i in range(len(images))]
  return dict(max_abs_image=float(np.abs(images - reference).max()),
              psnr_db_min=float(min(per_pose)), psnr_db_mean=float(np.mean(per_pose)))


def jax_reference(model, avatar, keypoints):
  """(images (N, H, W, 3), masks (N, H, W, 1) or None): `model.render` in float32 JAX at keypoints (N, K, 2)."""
  keypoints = np.asarray(keypoints, np.float32)
  reference = model.render(avatar, keypoints[None] if avatar.batched else keypoints)
  images = np.asarray(reference['image']).reshape(len(keypoints), *reference['image'].shape[-3:])
  masks = np.asarray(reference['mask']).reshape(len(keypoints), *reference['mask'].shape[-3:]) \
      if 'mask' in reference else None
  return images, masks


def compare_with_jax(model, avatar, fp32: bytes, fp16: bytes, keypoints, folded=None,
                     fp16_warp: str = 'patches') -> dict:
  """Accuracy of both files against `model.render` (float32 JAX) on keypoints (N, K, 2); with the
  FoldedFrame, also of the float16-arithmetic emulation of the FP16 graph (`fp16_arithmetic_images`)."""
  keypoints = np.asarray(keypoints, np.float32)
  ref_image, ref_mask = jax_reference(model, avatar, keypoints)
  runs = {name: TFLiteFrame(data) for name, data in (('fp32', fp32), ('fp16', fp16))}
  result = {'poses': int(len(keypoints))}
  for name, frame in runs.items():
    images, masks = [], []
    for k in keypoints:
      out = frame(k.reshape(1, -1))
      images.append(out['image'][0])
      if 'mask' in out:
        masks.append(out['mask'][0])
    entry = image_errors(np.stack(images), ref_image)
    if masks:
      entry['max_abs_mask'] = float(np.abs(np.stack(masks) - ref_mask).max())
    result[name] = entry
  if folded is not None:
    emulated = fp16_arithmetic_images(folded, keypoints, fp16_warp)
    result['fp16_arithmetic_emulated'] = image_errors(emulated, ref_image)
  return result

"""The per-frame graph of one avatar as a tf.function, converted to FP32 and FP16 TFLite (export, step 2b).

jax2tf (native serialization) turns the folded trunk into TF; warp.py adds the texture warp; the TFLite
converter writes builtin ops only, the FP16 file with float16 weights and DEQUANTIZE ops (GATHER tables
excepted: graph_edits.py).
"""
from __future__ import annotations

import contextlib
import functools
import os
import pathlib
import shutil
import tempfile

import numpy as np

from bilayer_jax.export import fold as fold_lib
from bilayer_jax.export.warp import tf_warp


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


def to_tflite(function, fp16: bool, score=None) -> bytes:
  """A tf.function -> .tflite bytes with builtin ops only. fp16 stores weights as float16 (+ DEQUANTIZE),
  except GATHER tables, kept in float32 so that a GPU delegate takes the GATHER (graph_edits.py), and the
  constants mixed_precision.fp16_file keeps in float32 (the small ones; large ones where score, a PSNR of
  the file against JAX, falls short)."""
  return to_tflite_with_info(function, fp16, score)[0]


def to_tflite_with_info(function, fp16: bool, score=None) -> tuple[bytes, dict]:
  """to_tflite, and for fp16 what mixed_precision.fp16_file kept in float32 ({} for FP32)."""
  import tensorflow as tf

  from bilayer_jax.export import graph_edits, mixed_precision

  def convert(fp16: bool) -> bytes:
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], function)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if fp16:
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      converter.target_spec.supported_types = [tf.float16]
    return bytes(converter.convert())

  if not fp16:
    return convert(False), {}
  # The FP16 file loses the float32 values: the FP32 conversion of the same function has them.
  data, info = mixed_precision.fp16_file(convert(True), convert(False), score)
  return graph_edits.gather_tables_in_float32(data)[0], info


SCRATCH_PREFIX = 'bilayer-export-'


def _running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


@contextlib.contextmanager
def scratch_tempdir():
  """tempfile's folder, for the duration, is one of this process's own, removed on every exit.

  The TFLite converter saves a SavedModel under tempfile's folder and removes it only when Python reaches its
  `finally`; a killed export used to leave it in /tmp. Folders left by processes that no longer run (kill -9)
  are removed the next time.
  """
  base = pathlib.Path(tempfile.gettempdir())
  for stale in base.glob(SCRATCH_PREFIX + '*'):
    pid = stale.name[len(SCRATCH_PREFIX):].split('-')[0]
    if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
      shutil.rmtree(stale, ignore_errors=True)
  scratch = tempfile.mkdtemp(prefix=f'{SCRATCH_PREFIX}{os.getpid()}-', dir=base)
  previous, tempfile.tempdir = tempfile.tempdir, scratch
  try:
    yield pathlib.Path(scratch)
  finally:
    tempfile.tempdir = previous
    shutil.rmtree(scratch, ignore_errors=True)


def convert(folded: fold_lib.FoldedFrame, with_mask: bool = False, fp32_warp: str = 'taps',
            fp16_warp: str = 'patches', fp16_score=None) -> tuple[bytes, bytes, dict]:
  """(FP32 bytes, FP16 bytes, what the FP16 file keeps in float32). By default the FP32 file samples with
  'taps' (exact in float32, cheap on a CPU) and the FP16 file, meant for a GPU computing in FP16, with
  'patches' (see tf_warp). fp16_score(bytes) -> dB: see mixed_precision.fp16_file."""
  with scratch_tempdir():
    fp32 = to_tflite(tf_frame_function(folded, with_mask, fp32_warp), fp16=False)
    fp16, info = to_tflite_with_info(tf_frame_function(folded, with_mask, fp16_warp), True, fp16_score)
  return fp32, fp16, info

"""Which constants of an FP16 file to keep in float32 (export, step 2c): the small ones always, large ones
only where a measured accuracy needs them.

FP16 storage halves the file, and on a GPU computing in FP16 it costs nothing that the arithmetic does not
cost anyway. Where the weights are stored in FP16 and computed in float32 (the CPU interpreter, XNNPACK, a GPU
delegate without precision loss) their rounding is the only error, and it depends on the checkpoint: 93-94 dB
for the trained demo model, 67-71 dB for the authors' random init at the tiny size, 39-43 dB at the paper size
with only the small constants in float32 (tools/fp16_paper.py, docs/export.md). So the FP16 file is scored as written and, below the target, large constants get their
float32 values back, the most accurate per byte first, until the target is met or the file has grown by
max_growth; the report says which and how much.
"""
from __future__ import annotations

import logging

import numpy as np

from bilayer_jax.export import graph_edits

log = logging.getLogger(__name__)

# The FP16 file's aim on the poses it is scored on: the export's promise of 40 dB with a margin for others.
TARGET_PSNR_DB = 42.0
MAX_GROWTH = 1.6


def _restore(fp16: bytes, fp32: bytes, positions) -> bytes:
  return graph_edits.constants_in_float32(fp16, fp32, lambda position, shape: position in positions)[0]


def fp16_file(fp16: bytes, fp32: bytes, score=None, target_db: float = TARGET_PSNR_DB,
              max_growth: float = MAX_GROWTH) -> tuple[bytes, dict]:
  """(FP16 file bytes, what was kept in float32). fp32: the FP32 conversion of the same function;
  score(bytes) -> PSNR in dB (min over poses) of a file against JAX, or None to keep only small constants."""
  data, small, unmatched = graph_edits.small_constants_in_float32(fp16, fp32)
  if unmatched:
    log.warning('%d small constants of the FP16 file stay float16: no float32 original matched them', unmatched)
  info = dict(small_constants_float32=small, large_constants_float32=[], target_db=target_db)
  if score is None:
    return data, info
  info['psnr_db_min_float16_weights'] = current_db = score(data)
  if current_db >= target_db:
    info['psnr_db_min'] = current_db
    return data, info
  limit = max_growth * len(data)
  gains = []
  for position, shape in graph_edits.float16_constants(data):
    trial = _restore(data, fp32, {position})
    if trial is data:  # no float32 original
      continue
    gains.append(((score(trial) - current_db) / max(len(trial) - len(data), 1), position, shape))
  chosen, result = set(), data
  for gain, position, shape in sorted(gains, reverse=True):
    if gain <= 0 or current_db >= target_db:
      break
    trial = _restore(data, fp32, chosen | {position})
    if len(trial) > limit:
      continue
    chosen.add(position)
    result, current_db = trial, score(trial)
    info['large_constants_float32'].append(dict(shape=list(shape), psnr_db_min=current_db))
    log.info('FP16 file: a %s constant in float32, %.1f dB (target %.1f)', shape, current_db, target_db)
  info.update(psnr_db_min=current_db, bytes_growth=len(result) / len(data))
  if current_db < target_db:
    log.warning('the FP16 file reaches %.1f dB (target %.1f) with float32 constants up to %.2fx its size',
                current_db, target_db, max_growth)
  return result, info


def frame_score(keypoints, reference_images):
  """score(bytes) for a per-frame file with one input (keypoints): PSNR min against reference_images."""
  from bilayer_jax.export.accuracy import image_errors
  from bilayer_jax.export.interpreter import TFLiteFrame

  keypoints = np.asarray(keypoints, np.float32)

  def score(data: bytes) -> float:
    frame = TFLiteFrame(data)
    images = np.stack([frame(k.reshape(1, -1))['image'][0] for k in keypoints])
    return image_errors(images, reference_images)['psnr_db_min']
  return score

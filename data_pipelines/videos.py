"""Whole preprocessed videos for evaluation: manifest + shards -> one dict per video (all stored frames).

  for video in iter_videos('OUT/', 'test'):  # {'name', 'frames', 'keypoints', 'masks'}
      ...

frames (T, S, S, 3) float32 in [-1, 1], keypoints (T, 68, 2) in [-1, 1], masks (T, S, S, 1) in [0, 1]; the
format `bilayer_jax.evaluate` takes. One video per identity by default, as in the paper's protocol.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from data_pipelines.input_pipeline import FrameReader, VideoIndex


def _decode(record: bytes) -> dict:
  import tensorflow as tf

  example = tf.train.Example.FromString(record)
  f = example.features.feature
  image = np.asarray(Image.open(io.BytesIO(f['image'].bytes_list.value[0])).convert('RGB'), np.float32)
  mask = np.asarray(Image.open(io.BytesIO(f['mask'].bytes_list.value[0])).convert('L'), np.float32)
  return {'image': (image / 255 - 0.5) * 2, 'mask': (mask / 255)[..., None],
          'keypoints': np.asarray(f['keypoints'].float_list.value, np.float32).reshape(68, 2)}


def iter_videos(data_dir, split: str = 'test', one_per_identity: bool = True, max_videos: int | None = None,
                max_frames: int | None = None):
  index = VideoIndex(data_dir, split)
  reader = FrameReader(index)
  seen = set()
  count = 0
  for i, video_id in enumerate(index.video_ids):
    person = str(video_id).split('/')[0]
    if one_per_identity and person in seen:
      continue
    seen.add(person)
    length = int(index.lengths[i]) if not max_frames else min(int(index.lengths[i]), max_frames)
    records = reader.read(np.arange(index.starts[i], index.starts[i] + length))
    frames = [_decode(r) for r in records]
    yield {'name': str(video_id), 'frames': np.stack([f['image'] for f in frames]),
           'keypoints': np.stack([f['keypoints'] for f in frames]),
           'masks': np.stack([f['mask'] for f in frames])}
    count += 1
    if max_videos and count >= max_videos:
      return

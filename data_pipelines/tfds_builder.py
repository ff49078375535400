"""The preprocessing output as a TFDS dataset: `tfds.builder_from_directory` on the output folder.

  builder = tfds_builder.builder('OUT/')           # splits, features, shard lengths (dataset_info.json)
  frames = tfds_builder.frames('OUT/', 'train')      # random access, decoded: frames[i]['image'] (S, S, 3) uint8
  clip = tfds_builder.video_frames('OUT/', 'train', 'PERSON/VIDEO')   # one video's frames, in order

Data flow: preprocess.py writes the ArrayRecord shards and the TFDS metadata -> here, for inspection,
evaluation and other tools; training reads the same files through input_pipeline.py, which decodes only
the frames it samples. TFDS reads ArrayRecord through `as_data_source` (random access); its `as_dataset`
(a tf.data stream) supports only TFRecord-like formats. A frame decodes to: image (S, S, 3) uint8,
mask (S, S, 1) uint8, keypoints (68, 2) float32 in [-1, 1], video_id / clip bytes, frame int64, box (4,) int64.
"""
from __future__ import annotations

import pathlib

from data_pipelines import records


def builder(data_dir):
  """The read-only TFDS builder of a preprocess output folder."""
  import tensorflow_datasets as tfds

  data_dir = pathlib.Path(data_dir)
  if not (data_dir / 'dataset_info.json').is_file():
    raise FileNotFoundError(f'{data_dir} has no dataset_info.json: not a finished `bilayer-jax preprocess` output')
  return tfds.builder_from_directory(str(data_dir))


def frames(data_dir, split: str = 'train'):
  """Random-access TFDS data source of a split's frames (decoded dicts), in stored order."""
  return builder(data_dir).as_data_source(split)


def video_frames(data_dir, split: str, video_id: str) -> list:
  """All stored frames of one video, in order (positions as in input_pipeline's *_frame)."""
  manifest = records.read_manifest(data_dir)
  info = manifest['splits'][split]
  for name, shard, offset, count in info['index']:
    if name == video_id:
      first = sum(info['shard_records'][:shard]) + offset
      source = frames(data_dir, split)
      return [source[i] for i in range(first, first + count)]
  raise KeyError(f'video {video_id!r} not in split {split!r}')

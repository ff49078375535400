"""The stored format: one tf.train.Example per frame, in ArrayRecord shards, grouped by video.

Data flow: extract.py's encoded frames -> `serialize_frame` -> `write_shard` (preprocess.py) ->
input_pipeline.py reads exactly the frames it samples (random access), tfds_builder.py reads it as TFDS.

Why ArrayRecord, one record per frame: training draws one (source, target) sample per video per epoch, i.e.
2 frames out of up to `max_frames`. With random access the pipeline reads those 2 frames (~40 KB at 256 px);
a TFRecord file can only be streamed, so it would need one record per video holding all its frames and
would read (and parse) all of them for each sample (~2 MB with 64 frames). Random access also gives an
exact per-epoch permutation of the videos, host sharding by index without reading other hosts' files and
O(1) resumption at any step (benchmarks/input_pipeline.py measures these). The files are a TFDS dataset
(`tfds.builder_from_directory(...).as_data_source(split)`); TFDS's `as_dataset` does not read ArrayRecord.

Frames of one video are consecutive records of one shard; manifest.json's per-split `index` lists each
video's [video_id, shard, first record in the shard, number of frames]. Features of a frame record:

  image      bytes   JPEG, RGB, image_size x image_size (the face crop)
  mask       bytes   PNG, 8-bit greyscale, same size (soft foreground mask; 255 = foreground)
  keypoints  float   136 = (68, 2) interleaved (x, y) in [-1, 1] crop coordinates
  video_id   bytes   PERSON/VIDEO
  clip       bytes   the clip's path relative to the input folder
  frame      int64   frame index within the clip
  box        int64   4 = crop box (left, top, right, bottom) in the clip's frame pixels
"""
from __future__ import annotations

import contextlib

import numpy as np

from data_pipelines import fs

DATASET_NAME = 'bilayer_faces'
FILE_FORMAT = 'array_record'
# group_size 1: every record is its own chunk, so reading one frame reads only that frame.
# No compression: JPEG and PNG bytes do not compress further.
WRITER_OPTIONS = 'group_size:1,uncompressed'


def shard_filename(split: str, index: int, count: int) -> str:
  """TFDS's default file name template: {DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}."""
  return f'{DATASET_NAME}-{split}.{FILE_FORMAT}-{index:05d}-of-{count:05d}'


def features(image_size: int):
  """The TFDS FeaturesDict matching `serialize_frame` (what tfds decodes the records into)."""
  import tensorflow_datasets as tfds

  return tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(image_size, image_size, 3), encoding_format='jpeg'),
      'mask': tfds.features.Image(shape=(image_size, image_size, 1), encoding_format='png'),
      'keypoints': tfds.features.Tensor(shape=(68, 2), dtype=np.float32),
      'video_id': tfds.features.Text(),
      'clip': tfds.features.Text(),
      'frame': tfds.features.Scalar(dtype=np.int64),
      'box': tfds.features.Tensor(shape=(4,), dtype=np.int64),
  })


def serialize_frame(frame: dict, video_id: str) -> bytes:
  """One frame from extract.py -> serialized tf.train.Example bytes."""
  import tensorflow as tf

  def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

  def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

  keypoints = np.asarray(frame['keypoints'], np.float32)
  if keypoints.shape != (68, 2):
    raise ValueError(f'keypoints must be (68, 2), got {keypoints.shape}')
  example = tf.train.Example(features=tf.train.Features(feature={
      'image': _bytes([frame['image']]),
      'mask': _bytes([frame['mask']]),
      'keypoints': tf.train.Feature(float_list=tf.train.FloatList(value=keypoints.reshape(-1))),
      'video_id': _bytes([video_id.encode()]),
      'clip': _bytes([frame['clip'].encode()]),
      'frame': _ints([frame['frame']]),
      'box': _ints(np.asarray(frame['box']).reshape(4)),
  }))
  # deterministic: map entries (the features) sorted by name; otherwise their order, and so the bytes of a
  # shard, depend on the process (string hashing), and a redone or retried shard would differ from the first
  return example.SerializeToString(deterministic=True)


def parse_spec():
  """tf.io.parse_example features for the fields the input pipeline needs."""
  import tensorflow as tf

  return {
      'image': tf.io.FixedLenFeature([], tf.string),
      'mask': tf.io.FixedLenFeature([], tf.string),
      'keypoints': tf.io.FixedLenFeature([136], tf.float32),
  }


def write_shard(path, records) -> bool:
  """Write serialized records to an ArrayRecord file atomically; never overwrites.

  The file is written under a unique temporary name and then renamed (fs.py), so two attempts at the same
  shard (a Beam bundle run twice) never share a file and a crash leaves no partial shard under the final
  name. Returns False when another attempt published the same shard first (this one's file is dropped).
  """
  from array_record.python import array_record_module

  if fs.path(path).exists():
    raise FileExistsError(f'{path} exists; not overwriting')

  def write(local_name):
    writer = array_record_module.ArrayRecordWriter(local_name, WRITER_OPTIONS)
    for record in records:
      writer.write(record)
    writer.close()

  return fs.write_through_local(path, write)


class ShardCorrupt(ValueError):
  """A shard file that cannot be read back."""


def shard_damaged(path, error: Exception) -> ShardCorrupt:
  first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
  return ShardCorrupt(f'{path} is damaged ({first}); move it aside and rerun the same `bilayer-jax preprocess` '
                      'command: it writes the missing shard again and keeps the others')


def open_shard(path):
  """An ArrayRecordReader of one shard; a damaged file raises ShardCorrupt naming it."""
  from array_record.python import array_record_module

  try:
    return array_record_module.ArrayRecordReader(str(path), 'readahead_buffer_size:0')
  except Exception as e:  # array_record raises RuntimeError/OSError with Riegeli's text, no file name
    raise shard_damaged(path, e) from e


def read_records(path, indices=None) -> list:
  """Records of one ArrayRecord file (all, or those at `indices`) as bytes."""
  reader = open_shard(path)
  try:
    if indices is None:
      indices = range(reader.num_records())
    found = list(reader.read(list(indices))) if len(indices) else []
    reader.close()  # closing checks the rest of the file too
    return found
  except Exception as e:
    with contextlib.suppress(Exception):  # a reader that failed may fail again on close
      reader.close()
    raise shard_damaged(path, e) from e


MANIFEST_FILE = 'manifest.json'


def read_manifest(data_dir) -> dict:
  """DATA_DIR/manifest.json, checked to be one `bilayer-jax preprocess` wrote (a clear error naming it if not)."""
  import json

  path = fs.path(data_dir) / MANIFEST_FILE
  if not path.is_file():
    raise FileNotFoundError(f'{path} not found: not a finished `bilayer-jax preprocess` output')
  redo = ('; move it aside and rerun the same `bilayer-jax preprocess` command: it writes the manifest again '
          'from the finished shards')
  try:
    manifest = json.loads(path.read_text(encoding='utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f'{path} is not a readable manifest ({type(e).__name__}: {e}){redo}') from None
  splits = manifest.get('splits') if isinstance(manifest, dict) else None
  if not isinstance(splits, dict) or 'image_size' not in manifest or not all(
      isinstance(v, dict) and {'shards', 'shard_records', 'index'} <= v.keys() for v in splits.values()):
    raise ValueError(f'{path} is JSON but not a bilayer-jax manifest (no splits with shards, shard_records and '
                     f'index, or no image_size){redo}')
  return manifest


def write_tfds_metadata(data_dir, image_size: int, shard_lengths: dict, shard_bytes: dict,
                        description: str = ''):
  """dataset_info.json + features.json so that `tfds.builder_from_directory(data_dir)` opens the shards.

  shard_lengths / shard_bytes: {split: [records per shard]} / {split: total bytes}.
  """
  import tensorflow_datasets as tfds

  template = tfds.core.ShardedFileTemplate(
      data_dir=tfds.core.Path(data_dir), template='{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}',
      dataset_name=DATASET_NAME, filetype_suffix=FILE_FORMAT)
  split_infos = [tfds.core.SplitInfo(name=split, shard_lengths=list(lengths), num_bytes=int(shard_bytes[split]),
                                     filename_template=template.replace(split=split))
                 for split, lengths in sorted(shard_lengths.items())]
  tfds.folder_dataset.write_metadata(
      data_dir=data_dir, features=features(image_size), split_infos=split_infos, filename_template=template,
      version='1.0.0', check_data=False, description=description)

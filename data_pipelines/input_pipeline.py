"""The training input pipeline: preprocessed shards -> tf.data batches of (source, target) frames per video.

  batches = make_dataset('OUT/', 'train', global_batch=40, seed=0, num_source=1, num_target=1)
  batch = next(batches)   # dict of numpy arrays, this host's share of the global batch

Data flow: preprocess.py's output (manifest.json index + ArrayRecord shards, records.py) -> here ->
the train step. One element = one video: its n source and t target frames are sampled, only those
frame records are read (random access), decoded and completed with the stickman.

Order and sharding: the global stream of an epoch is a permutation of all videos of the split (seeded,
a new one each epoch, `tf.random.experimental.index_shuffle`), cut into global batches of `global_batch`
videos; the last incomplete global batch of an epoch is dropped (as the authors did). Host h of P takes
slots [h * b, (h + 1) * b) of every global batch, b = global_batch / P: hosts are disjoint, together
complete, and the global batch is the same for any P. Every random choice is a function of (seed,
global step, slot), so `start_step` resumes at any step exactly, with no state to save.

Frame sampling per video of L frames (n + t frames per element, sources first):
  uniform  n + t distinct frames uniformly at random (repeats only if L < n + t)   [default]
  weyl     the authors' low-discrepancy sequence (docs/model.md §7.5): frame round(c * (L - 1)) with
           c <- (c + sqrt 5) mod 1 after every frame request, one sequence over the whole stream
  fixed    the authors' test rule: c restarts at 0 for every video (frames 0, round(0.236 (L - 1)), ...)

Batch structure (b = per-host batch, n / t = source / target frames, S = image_size):
  source_image      (b, n, S, S, 3) float32 in [-1, 1]
  source_keypoints  (b, n, 68, 2)   float32 in [-1, 1] crop coordinates (x, y)
  source_stickman   (b, n, S, S, 3) float32 in [-1, 1], data_pipelines.faces.stickman (docs/model.md §7.3)
  source_mask       (b, n, S, S, 1) float32 in [0, 1]
  source_frame      (b, n)          int32, position of the frame in the video's stored frame list
  target_image, target_keypoints, target_stickman, target_mask, target_frame: the same with t
  video_id          (b,)            bytes, PERSON/VIDEO
"""
from __future__ import annotations

import atexit
import math
import re
import pathlib
import threading
import weakref
from typing import Optional

import numpy as np

from data_pipelines.faces.stickman import draw_stickmen
from data_pipelines import records

SAMPLINGS = ('uniform', 'weyl', 'fixed')


class VideoIndex:
  """Per split: each video's id, first global record index and frame count, and the shard files."""

  def __init__(self, data_dir, split: str):
    data_dir = pathlib.Path(data_dir)
    manifest = records.read_manifest(data_dir)
    if split not in manifest['splits']:
      raise ValueError(f'split {split!r} not in {data_dir} (has {sorted(manifest["splits"])})')
    info = manifest['splits'][split]
    offsets = np.concatenate([[0], np.cumsum(info['shard_records'])]).astype(np.int64)
    self.image_size = int(manifest['image_size'])
    self.paths = [str(data_dir / name) for name in info['shards']]
    self.shard_records = list(info['shard_records'])
    self.video_ids = np.array([v[0] for v in info['index']], dtype=object)
    self.shards = np.array([v[1] for v in info['index']], np.int64)
    self.starts = np.array([offsets[v[1]] + v[2] for v in info['index']], np.int64)
    self.lengths = np.array([v[3] for v in info['index']], np.int64)
    self.offsets = offsets

  def __len__(self):
    return len(self.video_ids)


class FrameReader:
  """Random access to the frame records of a split; readers open lazily, shared by tf.data's threads."""

  def __init__(self, index: VideoIndex):
    self.index = index
    self._readers = {}
    self._lock = threading.Lock()

  def _reader(self, shard: int):
    reader = self._readers.get(shard)
    if reader is None:
      with self._lock:
        reader = self._readers.get(shard)
        if reader is None:
          reader = records.open_shard(self.index.paths[shard])
          self._readers[shard] = reader
    return reader

  def read(self, record_ids: np.ndarray) -> np.ndarray:
    """Global record indices (all in one shard, as a video's frames are) -> serialized records."""
    record_ids = np.asarray(record_ids, np.int64)
    shard = int(np.searchsorted(self.index.offsets, record_ids[0], side='right') - 1)
    positions = (record_ids - self.index.offsets[shard]).tolist()
    try:
      return np.array(self._reader(shard).read(positions), dtype=object)
    except records.ShardCorrupt:
      raise
    except Exception as e:  # Riegeli's "Corrupted ... file" names no file: say which shard it was
      raise records.shard_damaged(self.index.paths[shard], e) from e


def steps_per_epoch(num_videos: int, global_batch: int) -> int:
  return num_videos // global_batch


def _host(process_index, process_count):
  if process_index is None or process_count is None:
    import jax

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count})')
  return int(process_index), int(process_count)


def make_tf_dataset(data_dir, split: str = 'train', global_batch: int = 8, seed: int = 0, num_source: int = 1,
                    num_target: int = 1, image_size: Optional[int] = None, process_index: Optional[int] = None,
                    process_count: Optional[int] = None, sampling: str = 'uniform', start_step: int = 0,
                    shuffle: bool = True, num_epochs: Optional[int] = None, prefetch: int = 2):
  """The tf.data.Dataset of this host's batches (see the module docstring); `make_dataset` wraps it.

  image_size: output size (default: the stored size; another size is resized with antialiased bicubic).
  num_epochs: None = endless; otherwise the stream ends after that many epochs (counted from step 0).
  """
  import tensorflow as tf

  try:  # the input pipeline must not take accelerator memory from JAX
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    pass
  if sampling not in SAMPLINGS:
    raise ValueError(f'sampling must be one of {SAMPLINGS}, got {sampling!r}')
  if num_source < 1 or num_target < 0:
    raise ValueError(f'need num_source >= 1 and num_target >= 0, got {num_source}, {num_target}')
  index = VideoIndex(data_dir, split)
  host, hosts = _host(process_index, process_count)
  if global_batch % hosts:
    raise ValueError(f'global batch {global_batch} is not divisible by the {hosts} processes')
  local_batch = global_batch // hosts
  num_videos = len(index)
  spe = steps_per_epoch(num_videos, global_batch)
  if spe == 0:
    raise ValueError(f'split {split!r} has {num_videos} videos, fewer than one global batch of {global_batch}')
  stored = index.image_size
  size = stored if image_size is None else int(image_size)
  frames = num_source + num_target
  reader = FrameReader(index)

  video_ids = tf.constant(index.video_ids.astype(str))
  starts = tf.constant(index.starts)
  lengths = tf.constant(index.lengths)
  seed = int(seed)
  sqrt5 = math.sqrt(5.0)
  weyl_start = float(np.random.default_rng(seed).random())  # c0, drawn once per seed like the authors'

  def choose_frames(length, slot):
    """Frame positions (frames,) int64 in [0, length) for the element at global stream position `slot`."""
    if sampling == 'uniform':
      keys = tf.random.stateless_uniform([length], seed=tf.stack([tf.constant(seed, tf.int64), slot]))
      order = tf.argsort(keys, stable=True)
      return tf.cast(tf.gather(order, tf.range(frames) % tf.cast(length, tf.int32)), tf.int64)
    j = tf.range(frames, dtype=tf.float64)
    if sampling == 'weyl':
      c = tf.math.floormod(weyl_start + (tf.cast(slot, tf.float64) * frames + j) * sqrt5, 1.0)
    else:
      c = tf.math.floormod(j * sqrt5, 1.0)
    return tf.cast(tf.math.round(c * tf.cast(length - 1, tf.float64)), tf.int64)

  def element(counter):
    step = counter // local_batch
    slot_in_batch = host * local_batch + counter % local_batch
    epoch = step // spe
    position = (step % spe) * global_batch + slot_in_batch
    if shuffle:
      seeds = tf.stack([tf.constant(seed, tf.int64), epoch])
      video = tf.random.experimental.index_shuffle(position, seeds, num_videos - 1)
    else:
      video = position
    slot = step * global_batch + slot_in_batch  # position in the global stream, same on every host
    chosen = choose_frames(lengths[video], slot)
    serialized = tf.numpy_function(reader.read, [starts[video] + chosen], tf.string, stateful=False)
    serialized.set_shape([frames])
    parsed = tf.io.parse_example(serialized, records.parse_spec())
    # Accurate IDCT: the same pixels as PIL / OpenCV (TF's default fast IDCT is off by up to 13 levels).
    images = tf.stack([tf.io.decode_jpeg(parsed['image'][i], channels=3, dct_method='INTEGER_ACCURATE')
                       for i in range(frames)])
    masks = tf.stack([tf.io.decode_png(parsed['mask'][i], channels=1) for i in range(frames)])
    images = tf.ensure_shape(images, [frames, stored, stored, 3])
    masks = tf.ensure_shape(masks, [frames, stored, stored, 1])
    if size != stored:
      resize = lambda x: tf.clip_by_value(tf.image.resize(tf.cast(x, tf.float32), [size, size], 'bicubic',
                                                          antialias=True), 0, 255)
      images, masks = resize(images), resize(masks)
    return {'video_id': video_ids[video], 'image': images, 'mask': masks, 'frame': tf.cast(chosen, tf.int32),
            'keypoints': tf.reshape(parsed['keypoints'], [frames, 68, 2])}

  def finish(batch):
    """Per batch rather than per element: fewer, larger ops, and 8-bit pixels through the batching copy."""
    images = (tf.cast(batch['image'], tf.float32) / 255.0 - 0.5) * 2.0  # docs/model.md §7.2: [0, 1], then [-1, 1]
    masks = tf.cast(batch['mask'], tf.float32) / 255.0
    keypoints = batch['keypoints']
    stickmen = tf.numpy_function(lambda k: draw_stickmen(k, size), [keypoints], tf.float32, stateful=False)
    stickmen.set_shape([local_batch, frames, size, size, 3])
    out = {'video_id': batch['video_id']}
    for prefix, part in (('source', slice(0, num_source)), ('target', slice(num_source, frames))):
      out[f'{prefix}_image'] = images[:, part]
      out[f'{prefix}_keypoints'] = keypoints[:, part]
      out[f'{prefix}_stickman'] = stickmen[:, part]
      out[f'{prefix}_mask'] = masks[:, part]
      out[f'{prefix}_frame'] = batch['frame'][:, part]
    return out

  first = int(start_step) * local_batch
  if num_epochs is None:
    counters = tf.data.Dataset.counter(first, dtype=tf.int64)
  else:
    counters = tf.data.Dataset.range(first, int(num_epochs) * spe * local_batch, dtype=tf.int64)
  ds = counters.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options)
  return ds.prefetch(prefetch)


_DAMAGED_SHARD = re.compile(r'\S+ is damaged \(.*?\); move it aside .*? keeps the others')


class Batches:
  """Iterator of numpy batch dicts over a tf.data.Dataset.

  Python callbacks inside tf.data (our record reads and stickmen) can deadlock the interpreter's exit
  while an iterator still has work in flight; every live `Batches` is therefore closed at exit, before
  TensorFlow shuts down. Iterate tf datasets of this module yourself only if you delete the iterator
  before the program ends.
  """
  _live = weakref.WeakSet()
  _hooked = False

  def __init__(self, dataset):
    self.dataset = dataset
    self._iterator = iter(dataset)
    Batches._live.add(self)
    if not Batches._hooked:  # registered after TensorFlow's own hooks, so it runs before them
      atexit.register(Batches.close_all)
      Batches._hooked = True

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    import tensorflow as tf

    if self._iterator is None:
      raise StopIteration
    try:
      batch = next(self._iterator)
    except tf.errors.OpError as e:  # a record read inside tf.data failed: TF wraps our error in its own
      damaged = _DAMAGED_SHARD.search(e.message)
      if damaged:
        raise records.ShardCorrupt(damaged.group(0)) from None
      raise
    return {key: value.numpy() for key, value in batch.items()}

  def close(self):
    self._iterator = None

  @classmethod
  def close_all(cls):
    for batches in list(cls._live):
      batches.close()
    import gc

    gc.collect()


def make_dataset(data_dir, split: str = 'train', global_batch: int = 8, seed: int = 0, num_source: int = 1,
                 num_target: int = 1, image_size: Optional[int] = None, process_index: Optional[int] = None,
                 process_count: Optional[int] = None, sampling: str = 'uniform', start_step: int = 0,
                 shuffle: bool = True, num_epochs: Optional[int] = None, prefetch: int = 2) -> Batches:
  """An iterator of numpy batch dicts for this host (see the module docstring for the structure)."""
  return Batches(make_tf_dataset(data_dir, split, global_batch, seed, num_source, num_target, image_size,
                                 process_index, process_count, sampling, start_step, shuffle, num_epochs, prefetch))

"""Training batches for one host: the real tf.data pipeline over preprocessed videos, or a synthetic source.

Both yield this host's slice of each global batch as a dict of numpy arrays, starting at a given step, so
that a resumed run sees exactly the batches an uninterrupted run would have seen:
  {source,target}_image     (b, n, H, W, 3) float32 in [-1, 1]
  {source,target}_keypoints (b, n, 68, 2)   float32 in [-1, 1]
  {source,target}_stickman  (b, n, H, W, 3) float32 in [-1, 1]
  {source,target}_mask      (b, n, H, W, 1) float32 in [0, 1]
with b = global batch / process count.
"""
from __future__ import annotations

import itertools

import jax
import numpy as np

from data_pipelines.faces.stickman import draw_stickmen


def synthetic_sample(seed: int, index: int, size: int) -> dict:
  """One deterministic (source, target) pair: a coloured blob "face" whose keypoints move with it."""
  rng = np.random.default_rng([seed, index])
  base = rng.uniform(-0.4, 0.4, (68, 2)).astype(np.float32)
  out = {}
  yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing='ij')
  colour = rng.uniform(-1, 1, 3).astype(np.float32)
  for side in ('source', 'target'):
    shift = rng.uniform(-0.2, 0.2, 2).astype(np.float32)
    kp = np.clip(base + shift, -1, 1)
    cx, cy = kp.mean(0)
    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.2).astype(np.float32)
    image = (blob[..., None] * colour + (1 - blob[..., None]) * -0.5).astype(np.float32)
    out[f'{side}_image'] = image[None]
    out[f'{side}_keypoints'] = kp[None]
    out[f'{side}_stickman'] = draw_stickmen(kp[None], size)
    out[f'{side}_mask'] = (blob > 0.3).astype(np.float32)[None, ..., None]
  return out


def synthetic_batches(seed: int, global_batch: int, size: int, start_step: int = 0,
                      process_index: int | None = None, process_count: int | None = None):
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local = global_batch // process_count
  for step in itertools.count(start_step):
    first = step * global_batch + process_index * local
    samples = [synthetic_sample(seed, i, size) for i in range(first, first + local)]
    yield {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def make_batches(config, start_step: int):
  """The configured source of this host's batches, positioned at `start_step`."""
  data = config.data
  global_batch = config.training.batch_size
  if global_batch % jax.process_count():
    raise ValueError(f'global batch {global_batch} does not divide over {jax.process_count()} processes')
  if data.source == 'synthetic':
    return synthetic_batches(config.seed, global_batch, config.model.image_size, start_step)
  if data.source == 'records':
    if not data.dir:
      raise ValueError('data.dir is empty: pass --config.data.dir=FOLDER written by bilayer-jax preprocess '
                       '(or use data.source=synthetic)')
    from data_pipelines import input_pipeline  # the tf.data pipeline (needs tensorflow)
    return input_pipeline.make_dataset(
        data.dir, data.split, global_batch, seed=config.seed, num_source=data.num_source_frames,
        num_target=data.num_target_frames, image_size=config.model.image_size, sampling=data.sampling,
        start_step=start_step)
  raise ValueError(f"data.source must be 'synthetic' or 'records', got {data.source!r}")


def prefetch_to_devices(batches, put, depth: int):
  """(host batch, device batch) pairs with `depth` device batches in flight: each host batch is read and its
  transfer started `depth` steps before the step that uses it, so the step never waits for the input.

  put: host batch -> device arrays sharded as the step expects (DataParallel.put_batch: shard_map, pmap, one
  host or many). depth 0 puts each batch when it is needed.
  """
  import collections

  queue = collections.deque()

  def fill():
    while len(queue) <= depth:
      local = next(batches, None)
      if local is None:
        return
      queue.append((local, put(local)))

  fill()
  while queue:
    yield queue.popleft()
    fill()

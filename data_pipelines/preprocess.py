"""`bilayer-jax preprocess`: a folder of talking-head videos -> sharded training frames + manifest (a TFDS dataset).

  bilayer-jax preprocess VIDEOS/ OUT/ --size 256 --landmarks dlib --segmenter selfie --max-frames 64 --workers 16
  bilayer-jax preprocess VIDEOS/ OUT/ --runner direct          (Apache Beam's local runner; [beam] extra)
  bilayer-jax preprocess gs://B/vox2/dev gs://B/vox2_256 --runner dataflow --beam-options-file FILE
  (or: python -m data_pipelines.preprocess VIDEOS/ OUT/ ...; runners and their launch: docs/preprocessing.md)

Data flow: job.prepare (media.scan: videos, identity split -> a plan: videos grouped into shards, in sorted
order -> plan.json) -> a runner extracts the videos of each missing shard (extract.Extractor) and writes the
shard (job.write_shard): the default runner `pool` is worker processes on this machine, with this process
writing each shard when all its videos are back; a Beam runner does the same on Beam workers
(beam_runner.py) -> when every shard exists: TFDS metadata and manifest.json (job.finish). Both runners write
the same files, byte for byte.

Output folder:
  plan.json                              config + shard plan, written once; a rerun must match it
  bilayer_faces-{split}.array_record-NNNNN-of-MMMMM   frames (records.py), one file per shard
  shards/{split}-NNNNN.json              per shard: videos written (record offsets, counts), items skipped
  dataset_info.json, features.json       TFDS metadata (tfds.builder_from_directory)
  manifest.json                          written last: config, counts, per-split video index, skipped items

Resuming: a shard is done when its record file exists (written under a unique .tmp name, then renamed
without replacing a finished file), so a crash loses only the shards in progress; a rerun, with either
runner, processes only the missing shards and never rewrites a file that is complete. A rerun with other
input videos or another config stops with an error instead of mixing two datasets (use a new output
folder). Every skipped item (file, clip, video) is listed in the manifest with its reason, frame-level drops
are counted per video.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import logging
import multiprocessing
import os
import pathlib
import sys
import time
from typing import Optional

from data_pipelines import job as job_lib, records
from data_pipelines.config import Config
from data_pipelines.job import MANIFEST_FILE, PlanMismatch

log = logging.getLogger('bilayer_jax.preprocess')

# --runner values: the single-machine process pool, or a Beam runner (beam_runner.py); any other name
# ending in "Runner" is passed to Beam as it is.
BEAM_RUNNERS = {'direct': 'DirectRunner', 'prism': 'PrismRunner', 'dataflow': 'DataflowRunner',
                'flink': 'FlinkRunner', 'spark': 'SparkRunner', 'portable': 'PortableRunner'}


def beam_runner_name(runner: str) -> Optional[str]:
  """--runner value -> Beam's runner name, None for the pool; a clear error for an unknown name."""
  if runner == 'pool':
    return None
  if runner in BEAM_RUNNERS:
    return BEAM_RUNNERS[runner]
  if runner.endswith('Runner'):
    return runner
  raise ValueError(f'unknown runner {runner!r}: pool, {", ".join(BEAM_RUNNERS)}, or a Beam runner name '
                   '(...Runner)')


def _check_models(config: Config):
  """Fail before starting workers when a model file is missing (instead of skipping every video)."""
  from data_pipelines.faces import landmarks, segmentation

  landmarks.make_backend(config.landmarks)
  if config.segmenter == 'selfie':
    segmentation.SelfieSegmenter(config.selfie_model)


def preprocess(input_dir, output_dir, config: Config = Config(), num_workers: Optional[int] = None,
               progress: bool = True, runner: str = 'pool', beam_options=()) -> dict:
  """Run (or resume) the job. Returns a summary dict; the full record is OUT/manifest.json.

  runner: 'pool' (processes on this machine, `num_workers` of them) or a Beam runner (see BEAM_RUNNERS),
  with `beam_options` (Beam's command-line pipeline options, e.g. ['--num_workers=64']).
  """
  start = time.time()
  beam_name = beam_runner_name(runner)
  if beam_name and num_workers is not None:
    raise ValueError('--workers sets the pool\'s processes; a Beam runner takes its own options '
                     '(e.g. --beam-option=--direct_num_workers=2 --beam-option=--direct_running_mode=multi_processing)')
  if beam_name:
    from data_pipelines import beam_runner  # needs the [beam] extra: a clear ImportError without it

    beam_pipeline_options = beam_runner.pipeline_options(beam_name, list(beam_options))  # checked before any work
  job = job_lib.prepare(input_dir, output_dir, config)
  out, plan = job.out, job.plan
  num_videos = sum(len(s['videos']) for shards in plan['splits'].values() for s in shards)
  num_todo = sum(len(v) for v in job.todo.values())
  summary = {'output_dir': str(out), 'runner': runner, 'videos': num_videos,
             'videos_done_before': num_videos - num_todo, 'videos_processed': num_todo, 'shards_written': 0,
             'videos_written': 0, 'videos_skipped': 0, 'frames_written': 0}
  if job.todo:
    _check_models(config)
    if beam_name:
      summary.update(beam_runner.run(job, beam_pipeline_options, progress))
    else:
      summary.update(_run(job, num_workers, progress))
    job_lib.remove_temporaries(out)  # a failed attempt's files (a Beam worker lost mid-write)
  manifest_path = out / MANIFEST_FILE
  if not manifest_path.exists():
    manifest = job_lib.finish(out, plan, config, job.scan_skipped, job.input_dir)
    summary['manifest_written'] = True
  else:
    manifest = records.read_manifest(out)
    summary['manifest_written'] = False
  summary['total'] = manifest['counts']
  summary['splits'] = {s: {k: v for k, v in d.items() if k in ('videos', 'frames', 'persons')}
                       for s, d in manifest['splits'].items()}
  summary['skipped'] = len(manifest['skipped'])
  summary['seconds'] = round(time.time() - start, 2)
  return summary


def _run(job: job_lib.Job, num_workers, progress) -> dict:
  todo = job.todo
  tasks = [(key, pos, video) for key, members in todo.items() for pos, video in enumerate(members)]
  pending = {key: [None] * len(members) for key, members in todo.items()}
  stats = dict.fromkeys(('shards_written', 'videos_written', 'videos_skipped', 'frames_written'), 0)
  bar = _progress_bar(len(tasks), progress)

  def collect(key, position, result):
    bar.update(1)
    pending[key][position] = result
    if all(r is not None for r in pending[key]):
      split, index = key
      report = job_lib.write_shard(job.out, split, index, job.shard_count(split), pending.pop(key))
      for name, value in job_lib.shard_stats(report, len(todo[key])).items():
        stats[name] += value
      bar.set_postfix(frames=stats['frames_written'], skipped=stats['videos_skipped'], refresh=False)

  from data_pipelines import extract  # heavy (OpenCV, PIL, the faces package): only when there is work

  try:
    workers = os.cpu_count() if num_workers is None else num_workers
    if workers == 0:  # in this process: simplest to debug
      extract.init_worker(job.config)
      for task in tasks:
        collect(*extract.run_in_worker(task))
    else:
      _run_pool(tasks, job.config, workers, collect)
  finally:
    bar.close()
  return stats


def _run_pool(tasks, config, workers, collect):
  """Spawned workers (TensorFlow/JAX state in this process must not be forked); a bounded window of
  tasks in flight keeps memory flat; results are written in plan order per shard by `collect`."""
  from data_pipelines import extract

  context = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=extract.init_worker,
                                              initargs=(config,)) as pool:
    queue = iter(tasks)
    in_flight = set()
    while True:
      while len(in_flight) < 4 * workers:
        task = next(queue, None)
        if task is None:
          break
        in_flight.add(pool.submit(extract.run_in_worker, task))
      if not in_flight:
        break
      done, in_flight = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        collect(*future.result())


def _progress_bar(total: int, enabled: bool):
  from tqdm import tqdm

  return tqdm(total=total, unit='video', disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def format_summary(summary: dict) -> str:
  total = summary['total']
  lines = [f"{summary['output_dir']}: {summary['videos']} videos planned, "
           f"{summary['videos_processed']} processed now ({summary['videos_done_before']} done before) "
           f"in {summary['seconds']:.1f} s"]
  for split, info in summary['splits'].items():
    lines.append(f"  {split:5s} {info['videos']:8d} videos {info['frames']:9d} frames {info['persons']:6d} persons")
  dropped = ', '.join(f'{k[len("frames_"):]} {v}' for k, v in total.items()
                      if k.startswith('frames_') and k not in ('frames_written', 'frames_selected') and v)
  lines.append(f"  videos skipped {total['videos_skipped']}, items skipped {total['items_skipped']} "
               f"(see manifest.json); frames dropped: {dropped or 'none'}")
  if summary.get('beam_metrics'):
    lines.append('  Beam metrics (this run): ' + ', '.join(f'{k} {v}' for k, v in summary['beam_metrics'].items()))
  return '\n'.join(lines)


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
  parser = parser or argparse.ArgumentParser(prog='bilayer-jax preprocess', description=__doc__,
                                             formatter_class=argparse.RawDescriptionHelpFormatter)
  d = Config()
  parser.add_argument('input_dir', help='PERSON/VIDEO/CLIP videos or frame folders, or the authors\' layout')
  parser.add_argument('output_dir', help='output folder (created; resumed if it holds a matching plan)')
  parser.add_argument('--size', type=int, default=d.image_size, help='stored crop size (default %(default)s)')
  parser.add_argument('--landmarks', default=d.landmarks, choices=('dlib', 'face-alignment'))
  parser.add_argument('--segmenter', default=d.segmenter, choices=('selfie', 'none', 'user'))
  parser.add_argument('--masks', default=None, help='user masks: MASKS/<clip path without suffix>/<frame>.png')
  parser.add_argument('--selfie-model', default=None, help='path of selfie_segmentation.tflite')
  parser.add_argument('--frame-stride', type=int, default=d.frame_stride)
  parser.add_argument('--max-frames', type=int, default=d.max_frames, help='per video (default %(default)s)')
  parser.add_argument('--min-frames', type=int, default=d.min_frames)
  parser.add_argument('--min-face-size', type=int, default=d.min_face_size, help='px (default %(default)s)')
  parser.add_argument('--smooth-landmarks', type=float, default=d.smooth_landmarks, help='sigma in frames')
  parser.add_argument('--smooth-boxes', type=float, default=d.smooth_boxes, help='sigma in frames')
  parser.add_argument('--jpeg-quality', type=int, default=d.jpeg_quality)
  parser.add_argument('--test-fraction', type=float, default=d.test_fraction,
                      help='share of identities put in the test split (without train/ test/ folders)')
  parser.add_argument('--test-identities', nargs='*', default=[], help='persons always in the test split')
  parser.add_argument('--videos-per-shard', type=int, default=d.videos_per_shard)
  parser.add_argument('--workers', type=int, default=None,
                      help='pool runner: processes (default: all cores; 0: in-process)')
  parser.add_argument('--runner', default='pool',
                      help='pool (default: processes on this machine) or a Beam runner: '
                      f'{", ".join(BEAM_RUNNERS)} (needs the [beam] extra; see docs/preprocessing.md)')
  parser.add_argument('--beam-option', action='append', default=[], metavar='--NAME=VALUE',
                      help='a Beam pipeline option, repeatable, written with "=": --beam-option=--num_workers=64')
  parser.add_argument('--beam-options-file', default=None, metavar='FILE',
                      help='Beam pipeline options, as on a command line, one or more a line; # starts a comment')
  parser.add_argument('--no-progress', action='store_true')
  return parser


def read_beam_options(path) -> list:
  """An options file: Beam command-line options, shell-quoted, any number a line; '#' starts a comment."""
  import shlex

  try:
    text = pathlib.Path(path).read_text()
  except OSError as e:
    raise FileNotFoundError(f'--beam-options-file {path}: {e.strerror}') from None
  return [word for line in text.splitlines() for word in shlex.split(line, comments=True)]


def run_from_args(args) -> int:
  config = Config(image_size=args.size, landmarks=args.landmarks, segmenter=args.segmenter, masks_dir=args.masks,
                  selfie_model=args.selfie_model, frame_stride=args.frame_stride, max_frames=args.max_frames,
                  min_frames=args.min_frames, min_face_size=args.min_face_size,
                  smooth_landmarks=args.smooth_landmarks, smooth_boxes=args.smooth_boxes,
                  jpeg_quality=args.jpeg_quality, test_fraction=args.test_fraction,
                  test_identities=tuple(args.test_identities), videos_per_shard=args.videos_per_shard)
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
  try:
    beam_options = (read_beam_options(args.beam_options_file) if args.beam_options_file else []) + args.beam_option
    if beam_options and args.runner == 'pool':
      raise ValueError('--beam-option / --beam-options-file need a Beam --runner (direct, dataflow, flink, ...)')
    summary = preprocess(args.input_dir, args.output_dir, config, args.workers, progress=not args.no_progress,
                         runner=args.runner, beam_options=beam_options)
  except (ValueError, FileNotFoundError, FileExistsError, ImportError, PlanMismatch) as e:
    print(f'preprocess: {e}', file=sys.stderr)
    return 2
  print(format_summary(summary))
  return 0


def main(argv=None) -> int:
  return run_from_args(build_parser().parse_args(argv))


if __name__ == '__main__':
  sys.exit(main())

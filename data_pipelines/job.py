"""The runner-independent half of `bilayer-jax preprocess`: plan, shard files, reports, TFDS metadata, manifest.

  job = job_lib.prepare('VIDEOS/', 'OUT/', Config())         # scan, plan.json, the shards still missing
  report = job_lib.write_shard(job.out, split, index, job.shard_count(split), results)
  job_lib.finish(job.out, job.plan, job.config, job.scan_skipped, job.input_dir)   # metadata + manifest.json

Data flow: preprocess.py (the command, the process pool) and beam_runner.py (Apache Beam) both call these, so
either runner writes the same files: prepare -> per missing shard, extract.Extractor on its videos in plan
order -> write_shard -> finish when every shard exists. Paths may be local or gs:// (fs.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pathlib

from data_pipelines import fs, media, records
from data_pipelines.config import Config

log = logging.getLogger('bilayer_jax.preprocess')


PLAN_FILE = 'plan.json'
MANIFEST_FILE = records.MANIFEST_FILE
REPORTS_DIR = 'shards'
BEAM_TASKS_FILE = 'beam_tasks.jsonl'    # the Beam runner's list of missing shards (beam_runner.py), removed after
FORMAT_VERSION = 'bilayer-faces/1'


class PlanMismatch(RuntimeError):
  """The output folder was made from other input videos or another config."""


def make_plan(videos, config: Config, layout: str) -> dict:
  """Deterministic shard plan: per split, consecutive groups of `videos_per_shard` sorted videos."""
  splits = {}
  for video in videos:
    splits.setdefault(video.split, []).append(video)
  plan = {'format': FORMAT_VERSION, 'layout': layout, 'config': _config_dict(config), 'splits': {}}
  for split, members in sorted(splits.items()):
    step = config.videos_per_shard
    groups = [members[i:i + step] for i in range(0, len(members), step)]
    plan['splits'][split] = [
        {'videos': [v.video_id for v in group],
         'digest': hashlib.sha256('\n'.join(c.name for v in group for c in v.clips).encode()).hexdigest()}
        for group in groups]
  return plan


def _config_dict(config: Config) -> dict:
  data = dataclasses.asdict(config)
  data['test_identities'] = sorted(data['test_identities'])
  return data


def _describe_mismatch(old: dict, new: dict) -> str:
  for key in sorted(set(old['config']) | set(new['config'])):
    if old['config'].get(key) != new['config'].get(key):
      return f'config {key}: {old["config"].get(key)!r} before, {new["config"].get(key)!r} now'
  if old['layout'] != new['layout']:
    return f'layout {old["layout"]} before, {new["layout"]} now'
  ids = lambda p: {v for shards in p['splits'].values() for s in shards for v in s['videos']}
  added, removed = ids(new) - ids(old), ids(old) - ids(new)
  if added or removed:
    return f'{len(added)} videos added (e.g. {sorted(added)[:3]}), {len(removed)} removed (e.g. {sorted(removed)[:3]})'
  return 'the clips or the split of some videos changed'


def shard_paths(out, split: str, index: int, count: int):
  """-> (record file, report file) of one shard."""
  out = fs.path(out)
  return out / records.shard_filename(split, index, count), out / REPORTS_DIR / f'{split}-{index:05d}.json'


def write_shard(out, split, index, count, results) -> dict:
  """All results of one shard (plan order) -> its record file and its report. Both runners call this.

  The report is written first and the record file last: the record file's rename marks the shard as done.
  A second attempt at a shard that is already done (a Beam bundle retried) writes nothing and returns the
  report on disk; two attempts at once write identical files (the extraction is deterministic) under unique
  temporary names, and the later rename of the record file is dropped (fs.publish).
  """
  record_path, report_path = shard_paths(out, split, index, count)
  if record_path.exists():
    return dict(fs.read_json(report_path), written=False)
  serialized, videos, skipped = [], [], []
  for result in results:
    skipped += result['skipped_clips']
    if result['skipped']:
      skipped.append({'item': result['video_id'], 'reason': result['skipped']})
      continue
    videos.append({'video_id': result['video_id'], 'person': result['person'], 'offset': len(serialized),
                   'frames': len(result['frames']), 'counts': result['counts']})
    serialized += [records.serialize_frame(frame, result['video_id']) for frame in result['frames']]
  for item in skipped:
    log.info('skipped %s: %s', item['item'], item['reason'])
  report = {'split': split, 'shard': index, 'file': record_path.name, 'records': len(serialized),
            'bytes': sum(len(r) for r in serialized), 'videos': videos, 'skipped': skipped,
            'counts': {key: sum(r['counts'][key] for r in results) for key in results[0]['counts']}}
  if report_path.exists():
    log.warning('replacing %s left by an interrupted run (its shard file was never completed)', report_path)
  fs.write_json(report_path, report, replace=True)  # only ever replaces the report of an unfinished shard
  written = records.write_shard(record_path, serialized)  # the rename of this file marks the shard as done
  if not written:
    log.warning('%s was finished by another attempt at the same shard; this attempt\'s copy is dropped',
                record_path)
  return dict(report, written=written)


def shard_stats(report: dict, planned_videos: int) -> dict:
  """What one written shard adds to a run's summary (the same keys from both runners)."""
  return {'shards_written': int(report['written']), 'videos_written': len(report['videos']),
          'videos_skipped': planned_videos - len(report['videos']), 'frames_written': report['records']}


def finish(out, plan: dict, config: Config, scan_skipped: list, input_dir: str) -> dict:
  """All shards exist: TFDS metadata, then manifest.json (the last file written)."""
  reports = {split: [fs.read_json(shard_paths(out, split, i, len(shards))[1])
                     for i in range(len(shards))] for split, shards in plan['splits'].items()}
  records.write_tfds_metadata(
      out, config.image_size,
      {split: [r['records'] for r in rs] for split, rs in reports.items()},
      {split: sum(r['bytes'] for r in rs) for split, rs in reports.items()},
      description='Face crops, 68 keypoints and soft masks made by `bilayer-jax preprocess` (see manifest.json).')
  counts = {'videos_planned': 0, 'videos_written': 0}
  splits, skipped = {}, list(scan_skipped)
  for split, rs in reports.items():
    index = [[v['video_id'], r['shard'], v['offset'], v['frames']] for r in rs for v in r['videos']]
    splits[split] = {'shards': [r['file'] for r in rs], 'shard_records': [r['records'] for r in rs],
                     'videos': len(index), 'frames': sum(r['records'] for r in rs),
                     'persons': len({v['person'] for r in rs for v in r['videos']}), 'index': index}
    counts['videos_planned'] += sum(len(s['videos']) for s in plan['splits'][split])
    counts['videos_written'] += len(index)
    for r in rs:
      skipped += r['skipped']
      for key, value in r['counts'].items():  # frames: selected, written, and dropped by reason
        counts[f'frames_{key}'] = counts.get(f'frames_{key}', 0) + value
  counts['videos_skipped'] = counts['videos_planned'] - counts['videos_written']
  counts['items_skipped'] = len(skipped)
  manifest = {'format': FORMAT_VERSION, 'input_dir': str(input_dir), 'layout': plan['layout'],
              'config': plan['config'], 'record_format': records.FILE_FORMAT, 'image_size': config.image_size,
              'counts': counts, 'splits': splits, 'skipped': skipped}
  fs.write_json(out / MANIFEST_FILE, manifest)
  return manifest


@dataclasses.dataclass
class Job:
  """A prepared run: the plan is on disk, `todo` holds the shards whose record file is missing."""
  input_dir: str
  out: object                     # etils epath Path of the output folder
  config: Config
  plan: dict
  scan_skipped: list
  todo: dict                      # (split, shard index) -> [media.Video] in plan order

  def shard_count(self, split: str) -> int:
    return len(self.plan['splits'][split])


def _inside(out: str, source: str) -> bool:
  if not (fs.is_remote(out) or fs.is_remote(source)):
    out_path, source_path = pathlib.Path(out).resolve(), pathlib.Path(source).resolve()
    return out_path == source_path or source_path in out_path.parents
  out, source = out.rstrip('/') + '/', source.rstrip('/') + '/'
  return out.startswith(source)


def prepare(input_dir, output_dir, config: Config) -> Job:
  """Scan, plan, check or write plan.json, remove our temporaries, list the missing shards (both runners)."""
  config.validate()
  input_dir, output_dir = os.fspath(input_dir), os.fspath(output_dir)
  if _inside(output_dir, input_dir):
    raise ValueError(f'the output folder {output_dir} must not lie inside the input folder {input_dir}')
  layout, videos, scan_skipped = media.scan(input_dir, config.test_fraction, config.test_identities)
  if not videos:
    raise ValueError(f'no videos found in {input_dir} (expected PERSON/VIDEO/CLIP.mp4, frame folders, '
                     'or the authors\' imgs/keypoints/segs layout)')
  if config.segmenter == 'user' and layout == 'authors':
    raise ValueError("segmenter 'user' reads frame-aligned masks; the authors' layout brings its own in segs/")
  plan = make_plan(videos, config, layout)
  out = fs.path(output_dir)
  (out / REPORTS_DIR).mkdir(parents=True, exist_ok=True)
  plan_path = out / PLAN_FILE
  if plan_path.exists():
    old = fs.read_json(plan_path)
    if old != plan:
      raise PlanMismatch(f'{out} was made from other input or settings ({_describe_mismatch(old, plan)}); '
                         'use a new output folder')
  else:
    if any(out.glob(f'{records.DATASET_NAME}-*')) or (out / MANIFEST_FILE).exists():
      raise PlanMismatch(f'{out} holds data without a {PLAN_FILE}; use a new output folder')
    fs.write_json(plan_path, plan)
  remove_temporaries(out)
  by_id = {(v.split, v.video_id): v for v in videos}
  todo = {}
  for split, shards in plan['splits'].items():
    for index, shard in enumerate(shards):
      if not shard_paths(out, split, index, len(shards))[0].exists():
        todo[(split, index)] = [by_id[(split, vid)] for vid in shard['videos']]
  return Job(input_dir, out, config, plan, scan_skipped, todo)


def remove_temporaries(out):
  """Our own partial files from an interrupted run or a failed attempt (names from fs.temporary_name), and
  the Beam runner's task list."""
  out = fs.path(out)
  for stale in (list(out.glob(f'{records.DATASET_NAME}-*{fs.TMP_SUFFIX}'))
                + list(out.glob(f'*.json*{fs.TMP_SUFFIX}')) + list((out / REPORTS_DIR).glob(f'*{fs.TMP_SUFFIX}'))
                + list(out.glob(BEAM_TASKS_FILE))):
    stale.unlink()

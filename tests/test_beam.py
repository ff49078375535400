"""The preprocessing job on Apache Beam's local runner writes the pool's dataset, survives a killed run, and
never duplicates or replaces a shard when a bundle runs twice (data_pipelines/beam_runner.py)."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import data_pipelines
from data_pipelines import fs, job as job_lib, preprocess, records
from data_pipelines.config import Config
from data_pipelines.extract import DROPS
from tests.test_preprocess import CARPHONE, SEGMENTER, carphone_frames, frames_of, snapshot

beam = pytest.importorskip('apache_beam')

CONFIG = Config(max_frames=6, segmenter=SEGMENTER, test_identities=('person1',), videos_per_shard=1)
# The same settings on the command line (the killed run is a separate process).
CLI_CONFIG = ['--max-frames', '6', '--segmenter', SEGMENTER, '--test-identities', 'person1',
              '--videos-per-shard', '1']
SHARDS = 5  # one video a shard


def write_video(path: pathlib.Path, frames):
  import imageio.v2 as iio

  path.parent.mkdir(parents=True, exist_ok=True)
  writer = iio.get_writer(str(path), fps=25, codec='libx264', quality=8, macro_block_size=16)
  for frame in frames:
    writer.append_data(frame)
  writer.close()


def files(folder: pathlib.Path) -> dict:
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  """The carphone clip cut into three videos (one of two clips), a truncated file and a face-less video."""
  src = tmp_path_factory.mktemp('beam') / 'in'
  frames = carphone_frames()
  write_video(src / 'person0' / 'video0' / 'clip.mp4', frames[:30])
  write_video(src / 'person0' / 'video1' / 'clip.mp4', frames[30:60])
  write_video(src / 'person1' / 'video0' / 'a.mp4', frames[60:90])
  write_video(src / 'person1' / 'video0' / 'b.mp4', frames[90:])
  (src / 'person2' / 'video0').mkdir(parents=True)
  (src / 'person2' / 'video0' / 'clip.mp4').write_bytes(CARPHONE.read_bytes()[:300_000])
  noise = np.random.default_rng(0).integers(0, 256, (4, 144, 176, 3), dtype=np.uint8)
  write_video(src / 'person3' / 'video0' / 'clip.mp4', noise)
  return src


@pytest.fixture(scope='module')
def pool(inputs):
  out = inputs.parent / 'pool'
  summary = preprocess.preprocess(inputs, out, CONFIG, num_workers=2, progress=False)
  return {'out': out, 'summary': summary, 'manifest': records.read_manifest(out)}


@pytest.fixture(scope='module')
def direct(inputs):
  out = inputs.parent / 'direct'
  summary = preprocess.preprocess(inputs, out, CONFIG, progress=False, runner='direct')
  return {'out': out, 'summary': summary, 'manifest': records.read_manifest(out)}


def test_beam_writes_the_pools_dataset(pool, direct):
  # No manifest field differs between the runners (no timings or runner name are stored); only the
  # returned summaries differ: runner, seconds and beam_metrics.
  assert direct['manifest'] == pool['manifest']
  manifest = pool['manifest']
  assert manifest['counts']['videos_planned'] == 5 and manifest['counts']['videos_written'] == 3
  reasons = {item['item']: item['reason'] for item in manifest['skipped']}
  assert reasons['person2/video0/clip.mp4'].startswith('unreadable')
  assert reasons['person2/video0'] == 'no readable clip'
  assert reasons['person3/video0'].startswith('too few usable frames: 0 of 4')
  for split, videos in (('train', 2), ('test', 1)):
    stored, again = frames_of(pool['out'], split), frames_of(direct['out'], split)
    assert len(stored) == len(again) >= 5 * videos
    for a, b in zip(stored, again):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # Byte for byte: record files (serialized deterministically), reports, plan and TFDS metadata.
  assert files(direct['out']) == files(pool['out'])
  for name, summary in (('pool', pool['summary']), ('direct', direct['summary'])):
    assert summary['runner'] == name and summary['shards_written'] == SHARDS
    assert summary['videos_written'] == 3 and summary['videos_skipped'] == 2


def test_beam_metrics_count_what_the_manifest_lists(direct):
  metrics, counts = direct['summary']['beam_metrics'], direct['manifest']['counts']
  assert metrics['shards_written'] == SHARDS and 'shards_found_done' not in metrics
  assert metrics['videos_written'] == counts['videos_written'] == 3
  assert metrics['videos_skipped'] == counts['videos_skipped'] == 2
  for key in ('selected', 'written') + DROPS:
    assert metrics[f'frames_{key}'] == counts[f'frames_{key}'], key
  assert metrics['frames_no_face'] >= 4  # the four noise frames
  assert metrics['clips_skipped'] == 1  # the truncated file
  assert 'Beam metrics (this run): clips_skipped 1' in preprocess.format_summary(direct['summary'])


def test_a_killed_beam_run_resumes_to_the_pools_dataset(inputs, pool, tmp_path):
  out = tmp_path / 'out'
  command = [sys.executable, '-m', 'data_pipelines.preprocess', str(inputs), str(out), '--runner', 'direct',
             '--no-progress', *CLI_CONFIG]
  process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             cwd=pathlib.Path(__file__).resolve().parents[1])
  deadline = time.time() + 240
  try:
    while not [p for p in out.glob('bilayer_faces-*') if not p.name.endswith('.tmp')]:
      assert process.poll() is None, 'the Beam run ended before writing a shard'
      assert time.time() < deadline, 'no shard after 240 s'
      time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
  finally:
    process.kill()
    process.wait()
  done = sorted(p.name for p in out.glob('bilayer_faces-*') if not p.name.endswith('.tmp'))
  assert 1 <= len(done) < SHARDS and not (out / 'manifest.json').exists()
  kept = {name: stat for name, stat in snapshot(out).items() if name in done}
  summary = preprocess.preprocess(inputs, out, CONFIG, progress=False, runner='direct')
  assert summary['shards_written'] == SHARDS - len(done) and summary['videos_done_before'] == len(done)
  assert summary['beam_metrics']['shards_written'] == SHARDS - len(done)
  after = snapshot(out)
  assert all(after[name] == stat for name, stat in kept.items())  # the finished shards untouched
  assert not list(out.rglob('*.tmp')) and not (out / job_lib.BEAM_TASKS_FILE).exists()
  assert files(out) == files(pool['out'])


def test_the_remote_path_branches_on_local_files(inputs, pool, tmp_path, monkeypatch):
  # No cloud storage here: every path is taken for a remote one (gs://...), so the scan, the clip downloads,
  # the uploads of shard files and the publishing take their remote branches, through epath, on local files.
  copies = []
  local_copy = fs.local_copy

  def counted(name):
    copies.append(str(name))
    return local_copy(name)

  monkeypatch.setattr(fs, 'is_remote', lambda value: True)
  monkeypatch.setattr(fs, 'local_copy', counted)
  out = tmp_path / 'out'
  preprocess.preprocess(inputs, out, CONFIG, progress=False, runner='direct')
  assert len(copies) == 6 and all(name.endswith('.mp4') for name in copies)  # every clip, downloaded
  assert files(out) == files(pool['out'])


def fake_result(video_id: str, frames: int) -> dict:
  """What extract.Extractor returns, with tiny stand-in image bytes (write_shard does not decode them)."""
  counts = {key: 0 for key in ('selected', 'written') + DROPS}
  counts.update(selected=frames, written=frames)
  return {'video_id': video_id, 'person': video_id.split('/')[0], 'skipped': None, 'skipped_clips': [],
          'counts': counts,
          'frames': [{'image': b'jpeg', 'mask': b'png', 'keypoints': np.zeros((68, 2), np.float32),
                      'box': [0, 0, 8, 8], 'clip': f'{video_id}/c.mp4', 'frame': i} for i in range(frames)]}


def test_a_shard_done_twice_is_neither_duplicated_nor_replaced(tmp_path):
  out = tmp_path / 'out'
  (out / job_lib.REPORTS_DIR).mkdir(parents=True)
  record_path, report_path = job_lib.shard_paths(out, 'train', 0, 2)
  first = job_lib.write_shard(out, 'train', 0, 2, [fake_result('p/v', 3)])
  assert first['written'] and first['records'] == 3
  before = snapshot(out)
  # A second attempt (a retried bundle) finds the shard done and writes nothing.
  again = job_lib.write_shard(out, 'train', 0, 2, [fake_result('p/v', 3)])
  assert not again['written'] and again['records'] == 3 and snapshot(out) == before
  # Beam's DoFn skips it before any extraction (no models are loaded: setup() was not called).
  from data_pipelines import beam_runner

  shard_fn = beam_runner.ShardFn(str(out), Config(), {'train': 2})
  assert list(shard_fn.process(json.dumps({'split': 'train', 'shard': 0, 'videos': []}))) == []
  # Two attempts at once: the other one publishes while this one is still writing.
  record_path, _ = job_lib.shard_paths(out, 'train', 1, 2)

  def write_while_another_attempt_finishes(local_name):
    pathlib.Path(local_name).write_bytes(b'this attempt')
    record_path.write_bytes(b'the other attempt')

  assert not fs.write_through_local(record_path, write_while_another_attempt_finishes)
  assert record_path.read_bytes() == b'the other attempt' and not list(out.glob('*.tmp'))
  # A crash inside the writer leaves no file under the final name and no temporary.
  lost = job_lib.shard_paths(out, 'test', 0, 1)[0]
  with pytest.raises(ZeroDivisionError):
    fs.write_through_local(lost, lambda name: (pathlib.Path(name).write_bytes(b'half'), 1 / 0))
  assert not lost.exists() and not list(out.glob('*.tmp'))
  with pytest.raises(FileExistsError):
    fs.write_json(report_path, {})
  assert json.loads(report_path.read_text())['records'] == 3


def test_beam_options_on_the_command_line(inputs, tmp_path, capsys):
  options = tmp_path / 'dataflow.options'
  options.write_text('# a comment\n--project=my-project --region=europe-west4\n'
                     "--job_name='bilayer vox2'  # quoted\n\n")
  assert preprocess.read_beam_options(options) == ['--project=my-project', '--region=europe-west4',
                                                   '--job_name=bilayer vox2']
  from data_pipelines import beam_runner

  parsed = beam_runner.pipeline_options('DirectRunner', preprocess.read_beam_options(options)).get_all_options()
  assert parsed['project'] == 'my-project' and parsed['runner'] == 'DirectRunner'
  shipped = pathlib.Path(job_lib.__file__).parent / 'beam' / 'dataflow.options'  # the README's template
  parsed = beam_runner.pipeline_options('DataflowRunner', preprocess.read_beam_options(shipped)).get_all_options()
  assert parsed['machine_type'] == 'n2-standard-16' and parsed['num_workers'] == 64
  assert parsed['temp_location'].startswith('gs://') and parsed['sdk_container_image'] == 'IMAGE'
  out = tmp_path / 'out'
  cases = [(['--beam-option=--num_workers=4'], 'need a Beam --runner'),
           (['--runner', 'direct', '--workers', '2'], "sets the pool's processes"),
           (['--runner', 'nimbus'], 'unknown runner'),
           (['--runner', 'direct', '--beam-option=--runner=FlinkRunner'], 'choose the runner with `--runner`'),
           (['--runner', 'direct', '--beam-options-file', str(tmp_path / 'missing')], 'missing')]
  for extra, message in cases:
    assert preprocess.main([str(inputs), str(out), '--no-progress', *extra]) == 2
    assert message in capsys.readouterr().err, extra
  assert not out.exists()  # refused before any work


def test_without_apache_beam_the_beam_runner_names_the_extra(inputs, tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, 'apache_beam', None)  # `import apache_beam` now raises ImportError
  monkeypatch.delitem(sys.modules, 'data_pipelines.beam_runner', raising=False)  # imported again, and fails
  monkeypatch.delattr(data_pipelines, 'beam_runner', raising=False)
  assert preprocess.main([str(inputs), str(tmp_path / 'out'), '--no-progress', '--runner', 'direct']) == 2
  assert "pip install 'bilayer-jax[beam]'" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / 'out')

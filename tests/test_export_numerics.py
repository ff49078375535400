"""Export numerics with the authors' kind of weights: the FP32 conversion check and FP16 accuracy.

Fast: the committed reference fixture parity_a (the authors' networks at 32x32: harmonic keypoint encoding,
spectral norm, BatchNorm statistics from training-mode passes), its texture enhancer on. The FP32 check must
pass it and must refuse a conversion broken on purpose. Slow (-m slow, BILAYER_REFERENCE set): the paper size,
built from the reference code as tools/fp16_paper.py does.
"""
import os

import numpy as np
import pytest

pytest.importorskip('tensorflow')
pytest.importorskip('torch')  # the fixture is the authors' .pth files

import bilayer_jax  # noqa: E402
from bilayer_jax.export import accuracy, tflite  # noqa: E402
from bilayer_jax.interop import torch_checkpoint  # noqa: E402

from conftest import FIXTURES  # noqa: E402


@pytest.fixture(scope='module')
def reference_avatar():
  config, variables = torch_checkpoint.import_run(FIXTURES / 'parity_a' / 'run')
  model = bilayer_jax.Bilayer(config, variables)
  golden = np.load(FIXTURES / 'parity_a' / 'golden.npz')
  image, mask = golden['input/source_imgs'][0, 0], golden['input/source_segs'][0, 0]
  keypoints = golden['input/source_poses'][0, 0].reshape(68, 2)
  return model, model.create_avatar(image, keypoints, mask, enhance=True)


def export(model, avatar, out):
  return tflite.export_avatar(model, avatar, out, with_mask=True, latency_runs=0, num_poses=4, gpu_check='off')


def test_reference_weights_export(reference_avatar, tmp_path):
  model, avatar = reference_avatar
  report = export(model, avatar, tmp_path / 'out')
  errors = report['accuracy']
  print(f'\nparity_a fixture (32x32, enhancer on): FP32 {errors["fp32"]["psnr_db_min"]:.1f} dB, FP16 '
        f'{errors["fp16"]["psnr_db_min"]:.1f} dB, float16 arithmetic emulated '
        f'{errors["fp16_arithmetic_emulated"]["psnr_db_min"]:.1f} dB (min of 4 poses)')
  assert errors['fp32']['psnr_db_min'] >= accuracy.FP32_MIN_PSNR_DB
  assert errors['fp16']['psnr_db_min'] >= 40 and errors['fp16_arithmetic_emulated']['psnr_db_min'] >= 40
  assert (tmp_path / 'out' / 'model_fp16.tflite').is_file()


def _swap_uv(folded):
  kernel, bias = folded.heads
  order = np.r_[1, 0, 2:kernel.shape[-1]]
  return folded.replace(heads=(kernel[..., order], bias[order]))


def _swap_red_blue(folded):
  kernel, bias = folded.heads
  order = np.r_[0, 1, 4, 3, 2, 5:kernel.shape[-1]]
  return folded.replace(heads=(kernel[..., order], bias[order]))


def _drop_last_conv2(folded):
  # The last block's conv2 left out of the graph: its output is the skip branch alone.
  blocks = list(folded.blocks)
  kernel, bias = blocks[-1]['conv2']
  blocks[-1] = {**blocks[-1], 'conv2': (kernel * 0, bias * 0)}
  return folded.replace(blocks=tuple(blocks))


def _drop_mask_head(folded):
  kernel, bias = folded.heads
  return folded.replace(heads=(kernel.at[..., 5].set(0), bias.at[5].set(0)))


@pytest.mark.parametrize('breakage', [_swap_uv, _swap_red_blue, _drop_last_conv2, _drop_mask_head],
                         ids=['swapped uv channels', 'swapped red and blue', 'dropped conv', 'dropped mask head'])
def test_a_broken_conversion_is_refused(reference_avatar, tmp_path, monkeypatch, breakage):
  model, avatar = reference_avatar
  real = tflite.convert_lib.convert
  # The graphs are converted from a broken FoldedFrame; the check compares them with model.render.
  monkeypatch.setattr(tflite.convert_lib, 'convert', lambda folded, *args: real(breakage(folded), *args))
  with pytest.raises(RuntimeError, match='the conversion is wrong'):
    export(model, avatar, tmp_path / 'out')
  assert not (tmp_path / 'out').exists()


def test_the_two_file_export_holds_fp32_to_the_same_bound():
  from bilayer_jax.export import two_file
  assert two_file.FP32_MIN_PSNR_DB == accuracy.FP32_MIN_PSNR_DB


REFERENCE = os.environ.get('BILAYER_REFERENCE')


@pytest.fixture(scope='module')
def paper_avatar(tmp_path_factory):
  """Paper size, the authors' init after two training-mode passes with their BatchNorm momentum (1.0), and
  an avatar of a real photo (about 3 minutes on 2 cores)."""
  from bilayer_jax import animate
  from data_pipelines.faces import crop as crop_lib
  from data_pipelines.faces import landmarks
  from tools import fp16_paper

  checkpoint = fp16_paper.paper_checkpoint(REFERENCE, tmp_path_factory.mktemp('paper'), seed=0)
  model = bilayer_jax.load(checkpoint)
  photo = animate.read_image(fp16_paper.photo_path('matplotlib:grace_hopper.jpg'))
  face = crop_lib.prepare_face(photo, landmarks.make_backend('dlib'), model.config.image_size)
  avatar = model.create_avatar(face['image'], face['keypoints'], None, enhance=True)
  return model, avatar, fp16_paper.check_poses(face['keypoints'])


@pytest.mark.slow
@pytest.mark.reference
@pytest.mark.skipif(not REFERENCE, reason='set BILAYER_REFERENCE to a bilayer-model checkout')
def test_paper_size_export(paper_avatar, tmp_path):
  """The FP32 conversion that the max-abs check refused (its float32 rounding through a rough texture exceeds
  1e-3) passes the PSNR check; the FP16 file (FP16 weights, float32 small constants:
  graph_edits.small_constants_in_float32) holds 40 dB on the CPU interpreter. FP16 *arithmetic* is reported,
  not asserted: it stays near 33 dB emulated (docs/export.md)."""
  model, avatar, keypoints = paper_avatar
  report = tflite.export_avatar(model, avatar, tmp_path / 'out', keypoints=keypoints, latency_runs=0,
                                gpu_check='off')
  errors = report['accuracy']
  print(f'\npaper size: FP32 {errors["fp32"]["psnr_db_min"]:.1f} dB (max abs {errors["fp32"]["max_abs_image"]:.2g}), '
        f'FP16 file {errors["fp16"]["psnr_db_min"]:.1f} dB, FP16 arithmetic emulated '
        f'{errors["fp16_arithmetic_emulated"]["psnr_db_min"]:.1f} dB')
  assert errors['fp32']['max_abs_image'] > 1e-3 and errors['fp32']['psnr_db_min'] >= 80
  assert errors['fp16']['psnr_db_min'] >= 40

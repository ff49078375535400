"""FP16 export at the paper size with the authors' kind of weights: the evidence command of issue 17.

For each seed it builds a paper-size reference run from the authors' code (their random init, spectral norm,
a few training-mode passes with BatchNorm momentum 1.0 as their runner trains, so the running statistics
are the last batch's), imports it, and for each real photo makes the avatar, converts it as `export` does and
prints the PSNR against JAX float32 of: the FP32 file, the FP16 file on the CPU interpreter (FP16 weights,
float32 where bilayer_jax/export/mixed_precision.py keeps them, float32 arithmetic; the float32 constants
chosen on export's check poses, the figures from other poses), the float16-arithmetic emulation (accuracy.fp16_arithmetic_images) and, when a Vulkan
driver serves LiteRT's GPU accelerator, the FP16 file on it in FP16 arithmetic and with enforce_f32.

  python -m tools.fp16_paper --reference /path/to/bilayer-model --work /tmp/fp16 --seeds 0 1 [--photo P ...]
      [--size tiny]       reference runs of another size
      [--checkpoint CK]   also measure a checkpoint of ours (a trained one)
      [--sites]    also: which tensor of the folded trunk costs the image most when it alone is rounded
                   to float16 (one JAX run per tensor, all else float32)

Checkpoints are kept under --work/seed_N and reused. About 2 min per seed to build, 1-2 min per photo.
"""
from __future__ import annotations

import argparse
import functools
import pathlib

import numpy as np

DEFAULT_PHOTOS = ('skimage:astronaut.png', 'matplotlib:grace_hopper.jpg')


def photo_path(spec: str) -> pathlib.Path:
  """'skimage:NAME' / 'matplotlib:NAME' name a sample photo installed with those packages; else a path."""
  package, _, name = spec.partition(':')
  if package == 'skimage' and name:
    import skimage.data
    return pathlib.Path(skimage.data.__file__).parent / name
  if package == 'matplotlib' and name:
    import matplotlib
    return pathlib.Path(matplotlib.get_data_path()) / 'sample_data' / name
  return pathlib.Path(spec)


def paper_checkpoint(reference, work, seed: int, warmup_steps: int = 2, bn_momentum: float = 1.0,
                     size: str = 'paper') -> pathlib.Path:
  """A checkpoint of the given size (paper by default) imported from a reference run (made once, then reused)."""
  from bilayer_jax import config as config_lib
  from bilayer_jax.interop import torch_checkpoint
  from tools import reference_parity

  prefix = '' if size == 'paper' else f'{size}_'
  folder = pathlib.Path(work) / f'{prefix}seed_{seed}_steps_{warmup_steps}_momentum_{bn_momentum:g}'
  checkpoint = folder / 'checkpoint'
  if not (checkpoint / 'config.json').exists():
    reference_parity.make_reference_run(reference, folder / 'run', config_lib.flags_of(size), seed,
                                        warmup_steps=warmup_steps, num_identities=1, num_targets=1,
                                        bn_momentum=bn_momentum)
    torch_checkpoint.import_to_checkpoint(folder / 'run', checkpoint, overwrite=True)
  return checkpoint


def check_poses(source_keypoints, seed: int = 0, num_poses: int = 4) -> np.ndarray:
  """The source pose and jittered copies of it, as `export` checks by default (export_checkpoint)."""
  source = np.asarray(source_keypoints, np.float32).reshape(1, -1, 2)
  jitter = np.random.default_rng(seed).normal(0.0, 0.02, (num_poses - 1,) + source.shape[1:]).astype(np.float32)
  return np.clip(np.concatenate([source, source + jitter]), -1.0, 1.0)


def measure(model, avatar, keypoints, gpu: bool = True, fit_keypoints=None) -> dict:
  """Accuracy on keypoints of both converted files (accuracy.compare_with_jax) and, when it runs, of the FP16
  file on LiteRT's GPU accelerator in FP16 arithmetic and with enforce_f32 ('gpu_fp16', 'gpu_fp32').
  fit_keypoints: the poses the export scores the FP16 file on to choose its float32 constants (as export
  does with its check poses); other poses than keypoints, so that the figures are for unseen poses."""
  import time

  from bilayer_jax.export import accuracy, convert, fold, litert_gpu, mixed_precision

  folded = fold.fold_frame(model, avatar)
  start = time.perf_counter()
  fit_keypoints = keypoints if fit_keypoints is None else fit_keypoints
  fp32, fp16, fp16_constants = convert.convert(folded, fp16_score=mixed_precision.frame_score(
      fit_keypoints, accuracy.jax_reference(model, avatar, fit_keypoints)[0]))
  result = accuracy.compare_with_jax(model, avatar, fp32, fp16, keypoints, folded)
  result['fp16_float32_constants'] = fp16_constants
  result['conversion_s'] = time.perf_counter() - start
  if gpu:
    runs = litert_gpu.run_model(fp16, [[k.reshape(1, -1)] for k in keypoints], precisions=('fp16', 'fp32'))
    reference, _ = accuracy.jax_reference(model, avatar, keypoints)
    for precision, run in runs.items():
      if run.available and run.outputs:
        errors = accuracy.image_errors(np.stack([out[0][0] for out in run.outputs]), reference)
        result[f'gpu_{precision}'] = dict(errors, fully_accelerated=run.fully_accelerated)
      else:
        result[f'gpu_{precision}'] = dict(unavailable=run.reason or run.run_error)
  return result


def rounding_sites(model, avatar, keypoints) -> list[tuple[str, float]]:
  """(tensor, image PSNR in dB) with only that tensor of the folded trunk rounded to float16 (the warp
  and everything else float32), for the first pose; ('all', ...) rounds every one of them."""
  import jax
  import jax.numpy as jnp

  from bilayer_jax.export import accuracy, fold

  folded = fold.fold_frame(model, avatar)
  poses = jnp.asarray(np.asarray(keypoints[:1], np.float32).reshape(1, -1))
  names = []
  fold.trunk(folded, poses, with_mask=False, tap=lambda name, x: names.append(name) or x)

  def image(site):
    def tap(name, x):
      return x.astype(jnp.float16).astype(x.dtype) if site in (name, 'all') else x
    return np.asarray(jax.jit(functools.partial(fold.render, with_mask=False, tap=tap))(folded, poses)['image'])

  exact = image(None)
  return [(site, accuracy.image_errors(image(site), exact)['psnr_db_min']) for site in ['all'] + names]


def _cell(entry: dict, key: str) -> str:
  value = entry.get(key)
  return '-' if value is None else f'{value:.1f}' if 'psnr' in key else f'{value:.3g}'


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--reference', required=True, help='checkout of saic-violet/bilayer-model')
  p.add_argument('--work', required=True, help='folder for the reference runs and checkpoints (reused)')
  p.add_argument('--seeds', type=int, nargs='*', default=[0])
  p.add_argument('--size', default='paper', help='model size of the reference runs (tiny: a minute per seed)')
  p.add_argument('--checkpoint', nargs='*', default=[],
                 help='also measure these checkpoints (e.g. a trained one: demo_out/train/inference/step_N)')
  p.add_argument('--photo', nargs='*', default=list(DEFAULT_PHOTOS),
                 help='photos (paths, or skimage:NAME / matplotlib:NAME for their sample photos)')
  p.add_argument('--warmup-steps', type=int, default=2)
  p.add_argument('--bn-momentum', type=float, default=1.0,
                 help="BatchNorm momentum of the warm-up passes (1.0: the authors' runner; 0.1: PyTorch's)")
  p.add_argument('--no-enhance', action='store_true', help='avatars without the texture enhancer')
  p.add_argument('--no-gpu', action='store_true', help="skip LiteRT's GPU accelerator")
  p.add_argument('--sites', action='store_true', help='per-tensor float16 rounding cost (see above)')
  a = p.parse_args(argv)

  import bilayer_jax
  from bilayer_jax import animate
  from data_pipelines.faces import crop as crop_lib
  from data_pipelines.faces import landmarks

  backend = landmarks.make_backend('dlib')
  print('| seed | photo | FP32 dB min | FP16 interpreter dB min / mean | FP16 max abs | '
        'FP16 arithmetic (emulated) dB min | GPU FP16 arithmetic dB min | GPU float32 arithmetic dB min | '
        'FP32 max abs | large constants kept float32 | FP16 file growth |')
  print('|---|---|---|---|---|---|---|---|---|---|---|')
  runs = [(str(seed), paper_checkpoint(a.reference, a.work, seed, a.warmup_steps, a.bn_momentum, a.size))
          for seed in a.seeds] + [(path, pathlib.Path(path)) for path in a.checkpoint]
  for seed, checkpoint in runs:
    model = bilayer_jax.load(checkpoint)
    for spec in a.photo:
      path = photo_path(spec)
      face = crop_lib.prepare_face(animate.read_image(path), backend, model.config.image_size)
      avatar = model.create_avatar(face['image'], face['keypoints'], None,
                                   enhance=not a.no_enhance and 'texture_enhancer' in model.variables)
      # Scored on export's default check poses, measured on others (the source pose and new jitters).
      keypoints = check_poses(face['keypoints'], seed=1)
      r = measure(model, avatar, keypoints, gpu=not a.no_gpu, fit_keypoints=check_poses(face['keypoints']))
      gpu, gpu32 = r.get('gpu_fp16', {}), r.get('gpu_fp32', {})
      print(f'| {seed} | {path.name} | {_cell(r["fp32"], "psnr_db_min")} | {_cell(r["fp16"], "psnr_db_min")} / '
            f'{_cell(r["fp16"], "psnr_db_mean")} | {_cell(r["fp16"], "max_abs_image")} | '
            f'{_cell(r["fp16_arithmetic_emulated"], "psnr_db_min")} | '
            f'{gpu.get("unavailable") or _cell(gpu, "psnr_db_min")} | '
            f'{gpu32.get("unavailable") or _cell(gpu32, "psnr_db_min")} | {_cell(r["fp32"], "max_abs_image")} | '
            f'{len(r["fp16_float32_constants"]["large_constants_float32"])} | '
            f'{r["fp16_float32_constants"].get("bytes_growth", 1.0):.2f}x |',
            flush=True)
      if a.sites:
        for site, value in rounding_sites(model, avatar, keypoints):
          print(f'    only {site:14s} rounded to float16: image {value:6.1f} dB', flush=True)
  return 0


if __name__ == '__main__':
  raise SystemExit(main())

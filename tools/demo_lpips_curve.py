"""The quickstart's held-out metrics as training goes on: how many steps the demo needs to beat copying the
source frame (the quickstart's promise is LPIPS at least 0.03 below it).

  python -m tools.demo_lpips_curve --out curve --steps 100 250 500 --variant demo_2e-4        # benchmarks/results/demo_lpips_curve/
  python -m tools.demo_lpips_curve --out curve --steps 250 500 --variant lr_2e-3_batch_4      # (the demo now)

One run of the variant (tools/gan_ablations.py's names; `demo` is experiments/demo.py as it is) trains to each
step count in turn, resuming, and at each one exports the inference checkpoint as `make demo` does and scores
held-out frames 100-119 rendered from frame 0 (PSNR, SSIM, LPIPS; the same crops and metrics as the demo).
Results go to OUT/VARIANT.json after every step count; a step count already in it is not trained again.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

from tools import gan_ablations


def held_out_faces() -> dict:
  """Frame index -> prepared face (image, keypoints) for frame 0 and the held-out frames with a face."""
  import numpy as np
  from bilayer_jax import animate, demo
  from data_pipelines.faces import crop as crop_lib
  from data_pipelines.faces import landmarks

  frames, _ = animate.read_video(demo.asset_paths()['clip'])
  backend = landmarks.make_backend('dlib')
  faces = {}
  for i in [0, *demo.HELD_OUT]:
    try:
      faces[i] = crop_lib.prepare_face(np.ascontiguousarray(frames[i]), backend, 64)
    except crop_lib.NoFaceError:
      if i == 0:
        raise
  return faces


def score(checkpoint, faces: dict, lpips_params) -> dict:
  import numpy as np
  import bilayer_jax
  from bilayer_jax import metrics

  model = bilayer_jax.load(checkpoint)
  targets = [i for i in faces if i != 0]
  avatar = model.create_avatar(faces[0]['image'], faces[0]['keypoints'], enhance=False)
  fake = np.clip(np.asarray(model.render(avatar, np.stack([faces[i]['keypoints'] for i in targets]))['image']), -1, 1)
  real = np.stack([faces[i]['image'] for i in targets])
  return {'PSNR': float(metrics.psnr(fake, real, data_range=2.0)), 'SSIM': float(metrics.ssim(fake, real)),
          'LPIPS': float(metrics.lpips(lpips_params, fake, real))}


def baseline(faces: dict, lpips_params) -> dict:
  import numpy as np
  from bilayer_jax import metrics

  real = np.stack([faces[i]['image'] for i in faces if i != 0])
  copy = np.repeat(faces[0]['image'][None], len(real), 0)
  return {'PSNR': float(metrics.psnr(copy, real, data_range=2.0)), 'SSIM': float(metrics.ssim(copy, real)),
          'LPIPS': float(metrics.lpips(lpips_params, copy, real))}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--out', default='curve')
  p.add_argument('--steps', type=int, nargs='+', required=True)
  p.add_argument('--variant', default='demo', choices=sorted(gan_ablations.VARIANTS))
  a = p.parse_args(argv)
  if sorted(a.steps) != a.steps or a.steps[0] < 1:
    p.error('--steps must be positive and increasing (each run resumes the previous one)')

  from bilayer_jax import metrics
  from bilayer_jax.train import loop

  out = pathlib.Path(a.out)
  data = gan_ablations.prepare_data(out)
  faces = held_out_faces()
  lpips_params = metrics.load_lpips_params()
  path = out / f'{a.variant}.json'
  result = json.loads(path.read_text()) if path.exists() else {
      'variant': a.variant, 'overrides': gan_ablations.VARIANTS[a.variant][1],
      'copy_the_source': baseline(faces, lpips_params), 'held_out_frames': [i for i in faces if i != 0],
      'curve': []}
  done = {r['step'] for r in result['curve']}
  for steps in a.steps:
    if steps in done:
      continue
    config = gan_ablations.variant_config(a.variant, data, steps)
    config.training.bn_stats_batches = 20  # as experiments/demo.py: the checkpoint `make demo` would evaluate
    config.log_every = 25
    start = time.time()
    summary = loop.train(config, out / a.variant, progress=False)
    row = {'step': steps, **score(summary['inference_checkpoint'], faces, lpips_params),
           'seconds': round(time.time() - start, 1)}
    result['curve'].append(row)
    path.write_text(json.dumps(result, indent=1) + '\n')
    print(json.dumps(row), flush=True)
  copy = result['copy_the_source']
  print(f'\n{a.variant}: held-out frames {len(result["held_out_frames"])}, copy the source frame: '
        f'PSNR {copy["PSNR"]:.2f}  SSIM {copy["SSIM"]:.3f}  LPIPS {copy["LPIPS"]:.3f}')
  print('| step | PSNR | SSIM | LPIPS |\n|---:|---:|---:|---:|')
  for r in sorted(result['curve'], key=lambda r: r['step']):
    print(f'| {r["step"]} | {r["PSNR"]:.2f} | {r["SSIM"]:.3f} | {r["LPIPS"]:.3f} |')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())

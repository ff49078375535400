"""Short training runs of the quickstart's model under named config variants, for finding what makes the
GAN unhealthy (issue: G gets worse while D wins). Each variant trains from the same initialization on the
carphone clip the demo preprocesses, for the same number of steps; the per-step losses and GAN-health
metrics go to OUT/VARIANT.json and one comparison plot to OUT/ablations.png.

  python -m tools.gan_ablations --out ablations --steps 150 \
      --variants masked masked_no_gan masked_no_per masked_no_fm no_r1     # benchmarks/results/gan_ablations/
  python -m tools.gan_ablations --out ablations --steps 150 \
      --variants no_r1 demo_2e-4 d_shift d_noise d_lr_0.1 d_shift_noise       # benchmarks/results/gan_ablations_d/
  python -m tools.gan_ablations --list

A variant whose OUT/VARIANT.json exists is not trained again (delete the file to rerun it).

The data is preprocessed once into OUT/data (as `bilayer-jax demo` does: frames 0-99 of the clip, 64 px).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

# name -> (what it tests, overrides as {dotted.config.key: value}). The GAN-health variants start from the demo
# as it was when they were run: the authors' learning rate 2e-4 and batch 8 (AUTHORS_SPEED) and, but for
# `demo_2e-4` and the R1 variants, without its R1 penalty (the authors' discriminator).
AUTHORS_SPEED = {'training.learning_rate': 2e-4, 'training.batch_size': 8}
NO_R1 = {**AUTHORS_SPEED, 'training.discriminator.r1_weight': 0.0}
MASKED = {**NO_R1, 'training.apply_masks': True}
NO_ADV = {'training.loss_weights.adversarial': 0.0}
NO_FM = {'training.loss_weights.feature_matching': 0.0}
D = 'training.discriminator.'
VARIANTS = {
    'demo': ('experiments/demo.py as it is (unmasked losses, R1 gamma 1, learning rate 2e-3, batch 4)', {}),
    'demo_2e-4': ('the demo before its learning rate and batch changed: R1 gamma 1, 2e-4, batch 8', AUTHORS_SPEED),
    'no_r1': ("the demo with the authors' discriminator (no R1)", NO_R1),
    'masked': ('no R1; losses and D on images masked by the predicted mask', MASKED),
    'masked_no_gan': ('masked, no D at all (adversarial and feature matching 0)', {**MASKED, **NO_ADV, **NO_FM}),
    'masked_no_fm': ('masked, feature matching 0', {**MASKED, **NO_FM}),
    'masked_no_per': ('masked, no perceptual term', {**MASKED, 'training.perceptual': []}),
    'no_gan': ('no D at all', {**NO_R1, **NO_ADV, **NO_FM}),
    'no_fm': ('no R1, feature matching 0', {**NO_R1, **NO_FM}),
    'fm_1': ('no R1, feature matching weight 1', {**NO_R1, 'training.loss_weights.feature_matching': 1.0}),
    'd_lr_0.1': ('no R1, D learning rate 0.1x', {**NO_R1, D + 'learning_rate_scale': 0.1}),
    'd_shift': ('no R1, the same random shift (up to 1/8 of the side) of each real/fake pair before D',
                {**NO_R1, D + 'augment_shift': 0.125}),
    'd_noise': ("no R1, instance noise std 0.2 on D's images, fading over 1000 steps",
                {**NO_R1, D + 'instance_noise': 0.2, D + 'instance_noise_decay_steps': 1000}),
    'd_shift_noise': ('no R1, shift and instance noise together',
                      {**NO_R1, D + 'augment_shift': 0.125, D + 'instance_noise': 0.2,
                       D + 'instance_noise_decay_steps': 1000}),
    'd_r1_0.1': ('R1 penalty, gamma 0.1', {**AUTHORS_SPEED, D + 'r1_weight': 0.1}),
    'd_r1_10': ('R1 penalty, gamma 10', {**AUTHORS_SPEED, D + 'r1_weight': 10.0}),
    'r1_d_lr_0.1': ('R1 gamma 1 and D learning rate 0.1x', {**AUTHORS_SPEED, D + 'learning_rate_scale': 0.1}),
    'r1_noise': ("R1 gamma 1 and instance noise std 0.2 on D's images, fading over 3000 steps",
                 {**AUTHORS_SPEED, D + 'instance_noise': 0.2, D + 'instance_noise_decay_steps': 3000}),
    'no_sn_d': ('no R1, no spectral norm in D', {**NO_R1, 'model.spn_networks':
                                                 'identity_embedder, texture_generator, keypoints_embedder, inference_generator'}),
    # Learning speed of the demo (held-out LPIPS per step: tools/demo_lpips_curve.py).
    'lr_5e-4': ('R1 gamma 1, learning rate 5e-4 (G and D), batch 8', {**AUTHORS_SPEED, 'training.learning_rate': 5e-4}),
    'lr_1e-3': ('R1 gamma 1, learning rate 1e-3, batch 8', {**AUTHORS_SPEED, 'training.learning_rate': 1e-3}),
    'lr_2e-3': ('R1 gamma 1, learning rate 2e-3, batch 8', {**AUTHORS_SPEED, 'training.learning_rate': 2e-3}),
    'lr_4e-3': ('R1 gamma 1, learning rate 4e-3, batch 8', {**AUTHORS_SPEED, 'training.learning_rate': 4e-3}),
    'batch_4': ('R1 gamma 1, learning rate 2e-4, batch 4', {**AUTHORS_SPEED, 'training.batch_size': 4}),
    'lr_1e-3_batch_4': ('R1 gamma 1, learning rate 1e-3, batch 4', {'training.learning_rate': 1e-3, 'training.batch_size': 4}),
    'lr_2e-3_batch_4': ('R1 gamma 1, learning rate 2e-3, batch 4 (the demo now)',
                        {'training.learning_rate': 2e-3, 'training.batch_size': 4}),
}


def prepare_data(out: pathlib.Path) -> pathlib.Path:
  from bilayer_jax import animate, demo
  from data_pipelines import preprocess as preprocess_lib
  from data_pipelines.config import Config as PreprocessConfig

  data = out / 'data'
  if (data / 'manifest.json').exists():
    return data
  frames, _ = animate.read_video(demo.asset_paths()['clip'])
  demo.write_training_frames(frames, out / 'raw')
  preprocess_lib.preprocess(out / 'raw', data, PreprocessConfig(
      image_size=64, segmenter='none', max_frames=64, min_frames=2), num_workers=2, progress=False)
  return data


def variant_config(name: str, data_dir, steps: int):
  from bilayer_jax import config_files

  config = config_files.load('demo')
  for key, value in VARIANTS[name][1].items():
    config_files.set_field(config, key, value)
  config.data.dir = str(data_dir)
  config.training.num_steps = steps
  config.training.time_limit_minutes = 0.0
  config.training.bn_stats_batches = 0
  config.image_every = 0
  config.checkpoint_every = 10 ** 9
  config.log_every = 1  # every step's losses: the D-win counts are per step
  return config


def summary_line(name: str, history: list) -> str:
  """How often D wins outright (D_ADV < 0.01), and G's L1 and D's real-minus-fake score gap averaged over the
  last third of the run (a gap near 0: D barely tells real from fake)."""
  wins = [s for s, m in history if m['D_ADV'] < 0.01]
  tail = [m['G_L1'] for _, m in history[-max(1, len(history) // 3):]]
  first = f'first at step {wins[0]}' if wins else 'never'
  gaps = [m['D_real_score'] - m['D_fake_score'] for _, m in history[-len(tail):] if 'D_real_score' in m]
  gap = f'  D score gap {sum(gaps) / len(gaps):.2f}' if gaps else ''
  return (f'{name:14s} D_ADV < 0.01 at {len(wins):3d}/{len(history)} steps ({first:>17s})  '
          f'G_L1 step {history[0][0]} {history[0][1]["G_L1"]:.3f}, '
          f'mean of the last {len(tail)} {sum(tail) / len(tail):.3f}{gap}')


def plot(results: dict, path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  keys = ('G_L1', 'D_ADV', 'G_ADV', 'D score gap')

  def value(m, key):
    if key == 'D score gap':  # mean D score on real minus on fake: how far apart D holds them
      return m['D_real_score'] - m['D_fake_score'] if 'D_real_score' in m else None
    return m.get(key)

  fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), dpi=110)
  for name, history in results.items():
    for ax, key in zip(axes, keys):
      points = [(s, value(m, key)) for s, m in history if value(m, key) is not None]
      if points:
        ax.plot(*zip(*points), label=name, lw=0.8)
  for ax, key in zip(axes, keys):
    ax.set_title(key + (' (as each run measures it)' if key == 'G_L1' else ''), fontsize=9)
    ax.set_xlabel('step')
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--out', default='ablations')
  p.add_argument('--steps', type=int, default=300)
  p.add_argument('--variants', nargs='*', default=['demo'])
  p.add_argument('--list', action='store_true')
  a = p.parse_args(argv)
  if a.list:
    for name, (what, overrides) in VARIANTS.items():
      print(f'{name:14s} {what}  {overrides or ""}')
    return 0
  unknown = [v for v in a.variants if v not in VARIANTS]
  if unknown:
    raise SystemExit(f'unknown variants {unknown}; --list shows them')
  from bilayer_jax.train import loop, metrics_window

  out = pathlib.Path(a.out)
  out.mkdir(parents=True, exist_ok=True)
  data = prepare_data(out)
  results = {}
  for name in a.variants:
    path = out / f'{name}.json'
    if path.exists():
      results[name] = json.loads(path.read_text())['history']
      continue
    workdir = out / 'runs' / name
    if workdir.exists():
      raise SystemExit(f'{workdir} exists from an interrupted run; remove it to rerun {name}')
    config = variant_config(name, data, a.steps)
    start = time.time()
    loop.train(config, workdir, progress=False)
    history = metrics_window.read_history(workdir)
    path.write_text(json.dumps({'variant': name, 'what': VARIANTS[name][0], 'overrides': VARIANTS[name][1],
                                'steps': a.steps, 'seconds': round(time.time() - start, 1),
                                'history': history}) + '\n')
    results[name] = history
    print(summary_line(name, history), flush=True)
  for name, history in results.items():
    print(summary_line(name, history))
  plot(results, out / 'ablations.png')
  print(f'wrote {out / "ablations.png"}')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())

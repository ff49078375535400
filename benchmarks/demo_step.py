"""Where a quickstart training step's time goes: the demo's step (experiments/demo.py) against variants of it,
side by side in one run.

  python -m benchmarks.demo_step [--variants demo no_r1 no_perceptual] [--steps 16]

Each variant's step is compiled for this machine's devices as `bilayer-jax train` compiles it, on synthetic
64 px batches of the demo's size; then the variants take turns, one step each, so that all of them see the
same machine (a shared 2-core VM drifts by 10-30% within minutes). Prints the mean seconds per step and the ratio to the
first variant.
"""
from __future__ import annotations

import argparse
import statistics
import time

VARIANTS = {
    'demo': ('experiments/demo.py as it is (R1 gamma 1 on every step)', {}),
    'no_r1': ('no R1', {'training.discriminator.r1_weight': 0.0}),
    'no_perceptual': ('R1 on every step, no VGG16 perceptual term', {'training.perceptual': []}),
}


def build(overrides: dict):
  import jax
  from bilayer_jax import config_files
  from bilayer_jax.train import data, loop

  config = config_files.load('demo')
  config.data.source = 'synthetic'
  for key, value in overrides.items():
    config_files.set_field(config, key, value)
  trainer = loop.build_step(config)
  state = {'state': trainer.put_state(loop.initial_state(config))}
  batches = data.synthetic_batches(0, config.training.batch_size, config.model.image_size, 0, 0, 1)
  batch = trainer.put_batch(next(batches))

  def step():
    state['state'], _ = trainer.step(state['state'], batch)
    jax.block_until_ready(state['state'])

  start = time.time()
  step()
  return time.time() - start, step


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
  p.add_argument('--steps', type=int, default=16, help='timed steps per variant (after 2 warm-up steps)')
  a = p.parse_args(argv)
  steps = {}
  for name in a.variants:
    compile_s, steps[name] = build(VARIANTS[name][1])
    steps[name]()
    print(f'{name}: compiled and ran its first step in {compile_s:.0f} s', flush=True)
  times = {name: [] for name in a.variants}
  for _ in range(a.steps):
    for name in a.variants:
      start = time.perf_counter()
      steps[name]()
      times[name].append(time.perf_counter() - start)
  first = statistics.mean(times[a.variants[0]])
  print(f'\n| variant | what | s per step (mean of {a.steps}) | vs {a.variants[0]} |\n|---|---|---:|---:|')
  for name in a.variants:
    mean = statistics.mean(times[name])
    print(f'| {name} | {VARIANTS[name][0]} | {mean:.3f} | {mean / first:.2f}x |')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())

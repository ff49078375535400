"""Training-step throughput: bilayer-jax vs the authors' PyTorch networks, side by side in one run.

  python benchmarks/train_step.py --config small --batch 2 [--reference /path/to/bilayer-model] [--threads 1 2]

Both sides run stage 1 without the perceptual losses (adversarial, feature matching, L1, mask BCE), batch 2
identities by default, on the CPU: forward of every network, the discriminator twice, one backward, one
Adam step per network. The reference side gives the discriminator its gradient (the update the authors
intended, spec 10 B1; as published D gets none, which makes its backward cheaper). JAX runs in a
subprocess pinned with `taskset` for one thread (XLA's thread flags do not limit it, perf-notes.md).
Prints a Markdown table of step time and samples/s.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def jax_step_times(size: str, batch: int, steps: int) -> list[float]:
  import jax

  from bilayer_jax import model as model_lib
  from bilayer_jax.train import data
  from bilayer_jax.train.defaults import training_config
  from bilayer_jax.train.step import init_state, make_train_step

  config = training_config(size)
  config.training.perceptual = []
  variables = model_lib.init_variables(config.model, 0)
  state = init_state(config, variables)
  step = jax.jit(make_train_step(config, model_lib.build_networks(config.model), None, None), donate_argnums=0)
  batch_data = next(data.synthetic_batches(0, batch, config.model.image_size, 0, 0, 1))
  t = time.time()
  state, metrics = step(state, batch_data)
  jax.block_until_ready(metrics)
  print(f'  JAX compile + first step: {time.time() - t:.1f} s', file=sys.stderr, flush=True)
  times = []
  for _ in range(steps):
    t = time.time()
    state, metrics = step(state, batch_data)
    jax.block_until_ready(metrics)
    times.append(time.time() - t)
  return times


def reference_step_times(reference: str, size: str, batch: int, steps: int, threads: int) -> list[float]:
  import torch

  sys.path.insert(0, str(ROOT / 'tools'))
  import reference_parity

  torch.set_num_threads(threads)
  step = reference_parity.reference_training_step(reference, reference_parity.size_flags(size), batch)
  step()  # warm-up
  times = []
  for _ in range(steps):
    t = time.time()
    step()
    times.append(time.time() - t)
  return times


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', default='small', choices=['paper', 'small', 'tiny'])
  p.add_argument('--batch', type=int, default=2)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--threads', type=int, nargs='*', default=[1, 2])
  p.add_argument('--reference', default=os.environ.get('BILAYER_REFERENCE'), help='bilayer-model checkout')
  p.add_argument('--jax-worker', action='store_true', help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a.jax_worker:
    print(json.dumps(jax_step_times(a.config, a.batch, a.steps)))
    return
  rows = []
  for threads in a.threads:
    cpus = ','.join(str(i) for i in range(threads))
    cmd = ['taskset', '-c', cpus, sys.executable, __file__, '--jax-worker', '--config', a.config,
           '--batch', str(a.batch), '--steps', str(a.steps)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    jax_times = json.loads(out.stdout.strip().splitlines()[-1])
    rows.append(('bilayer-jax (XLA, jit)', threads, statistics.median(jax_times)))
    if a.reference:
      ref = reference_step_times(a.reference, a.config, a.batch, a.steps, threads)
      rows.append(('reference PyTorch (eager)', threads, statistics.median(ref)))
  load = os.getloadavg()
  print(f'\ntraining step, size {a.config}, batch {a.batch}, no perceptual losses; load {load[0]:.2f}\n')
  print('| implementation | threads | step time (median) | samples/s |')
  print('|---|--:|--:|--:|')
  for name, threads, t in rows:
    print(f'| {name} | {threads} | {t:.3f} s | {a.batch / t:.2f} |')


if __name__ == '__main__':
  main()

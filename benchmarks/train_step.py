"""Training-step throughput: bilayer-jax vs the authors' PyTorch networks, side by side in one run.

  python -m benchmarks.train_step --config small --batch 2 [--reference /path/to/bilayer-model] [--threads 1 2]

Both sides run stage 1 without the perceptual losses (adversarial, feature matching, L1, mask BCE), batch 2
identities by default, on the CPU: forward of every network, the discriminator twice, one backward, one
Adam step per network. The reference side gives the discriminator its gradient (the update the authors
intended, docs/model.md B1; as published D gets none, which makes its backward cheaper).

For each thread count one worker process, pinned with `taskset` to that many cores (XLA's thread flags do
not limit it, docs/performance.md), builds both steps and then alternates them, one JAX step, one PyTorch step,
so that both see the same machine: on a shared 2-core VM the speed drifts by 10-30% within minutes, which
separate runs would mistake for a difference between the implementations. The JAX side is the step
`bilayer-jax train` compiles for one device (train/loop.py). Prints a Markdown table of median step time
and samples/s.

Both sides of a worker share its memory allocator; `--allocators` picks which to measure (default: every
one available). `system` is glibc's malloc as it comes, which makes XLA page-fault its whole working set
every step; `glibc-kept` is glibc told to keep what it frees, what `bilayer-jax` runs on without tcmalloc;
`tcmalloc` is what it runs on when tcmalloc is installed (bilayer_jax/runtime.py).
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
ALLOCATORS = ('system', 'glibc-kept', 'tcmalloc')


def jax_step(size: str, batch: int, compute_dtype: str = 'float32'):
  """(compile seconds, a function of no arguments running one step and waiting for it)."""
  import jax

  from bilayer_jax.train import data, loop
  from bilayer_jax.train.defaults import training_config

  config = training_config(size)
  config.training.perceptual = []
  config.training.batch_size = batch
  config.training.compute_dtype = compute_dtype
  trainer = loop.build_step(config)
  state = trainer.put_state(loop.initial_state(config))
  batch_data = trainer.put_batch(next(data.synthetic_batches(0, batch, config.model.image_size, 0, 0, 1)))
  holder = {'state': state}

  def run():
    holder['state'], metrics = trainer.step(holder['state'], batch_data)
    jax.block_until_ready(metrics)

  t = time.time()
  run()
  return time.time() - t, run


def reference_step(reference: str, size: str, batch: int, threads: int):
  import torch

  from bilayer_jax import config as config_lib
  from tools import reference_parity

  torch.set_num_threads(threads)
  run = reference_parity.reference_training_step(reference, config_lib.flags_of(size), batch)
  t = time.time()
  run()
  return time.time() - t, run


def worker(a) -> dict:
  sides = {}
  compile_s, sides['bilayer-jax'] = jax_step(a.config, a.batch)
  print(f'  [{a.worker_threads} thread(s)] JAX compile + first step {compile_s:.1f} s', file=sys.stderr, flush=True)
  if a.reference:
    first_s, sides['reference'] = reference_step(a.reference, a.config, a.batch, a.worker_threads)
    print(f'  [{a.worker_threads} thread(s)] reference first step {first_s:.1f} s', file=sys.stderr, flush=True)
  times = {name: [] for name in sides}
  for name, run in sides.items():  # one more warm-up each
    run()
  for i in range(a.steps):
    for name, run in sides.items():
      t = time.time()
      run()
      times[name].append(time.time() - t)
    print(f'  [{a.worker_threads} thread(s)] round {i + 1}/{a.steps}: ' +
          ', '.join(f'{n} {v[-1]:.3f} s' for n, v in times.items()), file=sys.stderr, flush=True)
  return times


def main(argv=None):
  from bilayer_jax.config import SIZES

  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', default='small', choices=SIZES)
  p.add_argument('--batch', type=int, default=2)
  p.add_argument('--steps', type=int, default=7, help='timed rounds (one step of each side per round)')
  p.add_argument('--threads', type=int, nargs='*', default=[1, 2])
  p.add_argument('--reference', default=os.environ.get('BILAYER_REFERENCE'), help='bilayer-model checkout')
  p.add_argument('--allocators', nargs='*', choices=ALLOCATORS,
                 help='memory allocators to measure (default: all available)')
  p.add_argument('--worker-threads', type=int, help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a.worker_threads:
    from bilayer_jax import runtime
    in_use = runtime.setup_allocator()  # before JAX and PyTorch start threads, as `bilayer-jax` does
    if in_use != os.environ[runtime.ENV]:
      raise SystemExit(f'asked for the {os.environ[runtime.ENV]} allocator, running on {in_use}')
    runtime.configure_xla_cpu()  # as `bilayer-jax train` does
    print(json.dumps(worker(a)))
    return
  from bilayer_jax import runtime

  allocators = a.allocators or [x for x in ALLOCATORS if x != 'tcmalloc' or runtime.tcmalloc_library()]
  rows = []
  for allocator in allocators:
    base_env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    if allocator == 'tcmalloc':
      env = runtime.preload_env(base_env)
      if env is None:
        raise SystemExit('--allocators tcmalloc: tcmalloc is not installed (Debian/Ubuntu: libtcmalloc-minimal4)')
    else:
      env = dict(base_env, **{runtime.ENV: allocator})
      env['LD_PRELOAD'] = ':'.join(x for x in env.get('LD_PRELOAD', '').split(':') if x and 'tcmalloc' not in x)
    for threads in a.threads:
      if threads > os.cpu_count():
        raise SystemExit(f'--threads {threads}: this machine has {os.cpu_count()} cores')
      cpus = ','.join(str(i) for i in range(threads))
      cmd = ['taskset', '-c', cpus, sys.executable, '-m', 'benchmarks.train_step', '--worker-threads', str(threads), '--config', a.config,
             '--batch', str(a.batch), '--steps', str(a.steps)] + (['--reference', a.reference] if a.reference else [])
      print(f'{allocator} malloc, {threads} thread(s):', file=sys.stderr, flush=True)
      out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, check=True, cwd=ROOT)
      times = json.loads(out.stdout.strip().splitlines()[-1])
      for name, values in times.items():
        label = 'bilayer-jax (XLA, jit)' if name == 'bilayer-jax' else 'reference PyTorch (eager)'
        rows.append((label, allocator, threads, statistics.median(values), min(values)))
  load = os.getloadavg()
  flags = os.environ.get('XLA_FLAGS', '')
  print(f'\ntraining step, size {a.config}, batch {a.batch}, no perceptual losses, {a.steps} alternating rounds; '
        f'load {load[0]:.2f}{"; XLA_FLAGS=" + flags if flags else ""}\n')
  print('| implementation | malloc | threads | step time (median) | fastest | samples/s (median) |')
  print('|---|---|--:|--:|--:|--:|')
  for name, allocator, threads, median, fastest in rows:
    print(f'| {name} | {allocator} | {threads} | {median:.3f} s | {fastest:.3f} s | {a.batch / median:.2f} |')


if __name__ == '__main__':
  main()

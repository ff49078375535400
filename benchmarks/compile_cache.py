"""Time to the first training step, without and with JAX's persistent compilation cache, side by side.

  python -m benchmarks.compile_cache [--config tiny_cpu:synthetic,micro] [--out benchmarks/results/compile_cache.json]

Runs `bilayer-jax train` three times, each in a new workdir, for a few steps: a cold start with the cache
turned off, a first start with an empty cache folder (it fills it), and a second start that reads it (what a
restarted or preempted run does). Each process reports how long after its start the first step was compiled
and dispatched; the whole process's wall time is printed beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

FIRST_STEP = re.compile(r'first step compiled and dispatched ([0-9.]+) s after start')


def run(config: str, workdir: pathlib.Path, cache: str, steps: int) -> dict:
  command = [sys.executable, '-m', 'bilayer_jax.cli', 'train', '--config', config, '--workdir', str(workdir),
             f'--config.training.num_steps={steps}', '--config.image_every=0', '--config.training.bn_stats_batches=0',
             f'--config.compilation_cache_dir={cache}']
  start = time.time()
  done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  wall = time.time() - start
  if done.returncode != 0:
    raise SystemExit(f'train failed ({done.returncode}):\n{done.stderr[-3000:]}')
  found = FIRST_STEP.search(done.stdout)
  return {'first_step_s': float(found.group(1)) if found else None, 'process_s': round(wall, 1)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', default='tiny_cpu:synthetic,micro')
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--out', default=None, help='also write the figures as JSON here')
  a = p.parse_args(argv)
  with tempfile.TemporaryDirectory(prefix='compile-cache-') as scratch:
    scratch = pathlib.Path(scratch)
    cache = scratch / 'cache'
    results = {
        'cache off': run(a.config, scratch / 'a', 'none', a.steps),
        'cache empty (first start)': run(a.config, scratch / 'b', str(cache), a.steps),
        'cache filled (restart)': run(a.config, scratch / 'c', str(cache), a.steps),
    }
    entries = sum(1 for f in cache.rglob('*') if f.is_file())
  import jax
  print(f'config {a.config}, {a.steps} steps per run; jax {jax.__version__}, {os.cpu_count()} CPUs; '
        f'{entries} cache entries written')
  print(f'{"start":28s} {"first step (s)":>15s} {"process (s)":>12s}')
  for name, r in results.items():
    print(f'{name:28s} {r["first_step_s"]:15.1f} {r["process_s"]:12.1f}')
  if a.out:
    pathlib.Path(a.out).write_text(json.dumps({'config': a.config, 'steps': a.steps, 'jax': jax.__version__,
                                               'cpus': os.cpu_count(), 'cache_entries': entries,
                                               'results': results}, indent=2) + '\n')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())

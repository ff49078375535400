"""Per-avatar latency on this CPU: the two-file export's avatar graph (TFLite FP32/FP16), JAX create_avatar and
the authors' PyTorch per-avatar path, side by side, at 1 and 2 threads.

  python -m benchmarks.avatar_latency --config paper --runs 5 --rounds 2 --reference /path/to/bilayer-model

What runs, for one source of a randomly initialized model (weights do not change the speed; no enhancer):
  tflite fp32/fp16  avatar_fp32/fp16.tflite (export.two_file.convert_pair): image, stickman, mask ->
                    texture, avatar_params; interpreter num_threads = 1 / 2
  jax               model.create_avatar(..., enhance=False), jit; one thread = the worker under `taskset -c 0`
  reference         the authors' identity embedder, texture projector + texture generator, inference
                    projector + its assign_adaptive_params, from the checkout given by --reference,
                    torch.set_num_threads(1 / 2), torch.inference_mode
Each measurement is the median of --runs calls after a warm-up, in its own subprocess, one at a time; every
measurement is repeated in --rounds interleaved rounds and the table shows each path's best round (the
machine is shared; all rounds are listed, with the load average before and after).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.render_latency import _median_ms, machine, parse_common

ROOT = pathlib.Path(__file__).resolve().parents[1]
THREADS = (1, 2)


def _source(size: int, seed: int):
  from data_pipelines.faces.stickman import draw_stickman

  rng = np.random.default_rng(seed)
  keypoints = rng.uniform(-0.7, 0.7, (68, 2)).astype(np.float32)
  return dict(image=rng.uniform(-1, 1, (size, size, 3)).astype(np.float32), keypoints=keypoints,
              stickman=draw_stickman(keypoints, size), mask=np.ones((size, size, 1), np.float32))


def worker_tflite(work: pathlib.Path, threads: int, runs: int, precision: str) -> dict:
  from bilayer_jax.export import interpreter

  model = (work / f'avatar_{precision}.tflite').read_bytes()
  return dict(ms=interpreter.latency_ms(model, threads, runs, warmup=2))


def worker_jax(work: pathlib.Path, threads: int, runs: int, config_size: str, seed: int) -> dict:
  import jax

  import bilayer_jax

  model = bilayer_jax.init(config_size, seed=seed)
  src = _source(model.config.image_size, seed)
  step = lambda: jax.block_until_ready(model.create_avatar(src['image'], src['keypoints'], enhance=False).texture)
  return dict(ms=_median_ms(step, runs, warmup=2), cpus=sorted(os.sched_getaffinity(0)))


def worker_reference(work: pathlib.Path, threads: int, runs: int, reference: str, config_size: str, seed: int) -> dict:
  import importlib

  import torch

  from bilayer_jax import config as config_lib
  from tools import reference_parity

  torch.set_num_threads(threads)
  torch.manual_seed(seed)
  with reference_parity.reference_on_path(reference):
    args = reference_parity.reference_args(config_lib.flags_of(config_size))
    nets = {name: importlib.import_module(f'networks.{name}').NetworkWrapper(args).eval()
            for name in ('identity_embedder', 'texture_generator', 'inference_generator')}
  src = _source(args.image_size, seed)
  chw = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None, None]
  data = {'source_imgs': chw(src['image']), 'source_stickmen': chw(src['stickman']), 'source_segs': chw(src['mask'])}

  def step():
    with torch.inference_mode():
      out = nets['identity_embedder'](dict(data), [], {})
      out = nets['texture_generator'](out, [], {})
      inf = nets['inference_generator']
      weights, biases = inf.prj_inf(out['source_idt_embeds'])
      inf.assign_adaptive_params(inf.gen_inf, weights, biases)
      return out['pred_tex_hf_rgbs']

  return dict(ms=_median_ms(step, runs, warmup=2), torch_threads=torch.get_num_threads())


WORKERS = dict(tflite=worker_tflite, jax=worker_jax, reference=worker_reference)


def run_worker(kind: str, work: pathlib.Path, threads: int, runs: int, **extra) -> dict:
  env = dict(os.environ)
  prefix = ['taskset', '-c', ','.join(str(i) for i in range(threads))] if kind == 'jax' else []
  env['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
  env['TF_CPP_MIN_LOG_LEVEL'] = '3'
  command = prefix + [sys.executable, '-m', 'benchmarks.avatar_latency', '--worker', kind, '--work', str(work),
                      '--threads', str(threads), '--runs', str(runs), '--extra', json.dumps(extra)]
  done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
  lines = [line for line in done.stdout.splitlines() if line.startswith('{')]
  if done.returncode or not lines:
    raise RuntimeError(f'{kind} worker ({threads} threads) failed:\n{done.stderr[-3000:]}')
  return json.loads(lines[-1])


def setup(config_size: str, work: pathlib.Path, seed: int) -> dict:
  import bilayer_jax
  from bilayer_jax.export import avatar_graph, convert

  model = bilayer_jax.init(config_size, seed=seed)
  start = time.perf_counter()
  folded = avatar_graph.fold_avatar(model)
  sizes = {}
  with convert.scratch_tempdir():
    function = avatar_graph.tf_avatar_function(folded)
    for precision in ('fp32', 'fp16'):
      data = convert.to_tflite(function, fp16=precision == 'fp16')
      (work / f'avatar_{precision}.tflite').write_bytes(data)
      sizes[precision] = len(data)
  return dict(config=model.config, conversion_s=time.perf_counter() - start, bytes=sizes)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', default='paper', help='model size: paper, small or tiny')
  p.add_argument('--runs', type=int, default=5, help='timed calls per measurement (median)')
  p.add_argument('--rounds', type=int, default=2, help='interleaved repetitions; the table shows the best round')
  a = parse_common(p, argv, WORKERS)
  if a.worker:
    return 0

  load_before = os.getloadavg()
  rows = [('TFLite avatar FP32', 'tflite', dict(precision='fp32')),
          ('TFLite avatar FP16', 'tflite', dict(precision='fp16')),
          ('JAX create_avatar (no enhancer)', 'jax', dict(config_size=a.config, seed=a.seed))]
  if a.reference:
    rows.append(('reference PyTorch', 'reference', dict(reference=a.reference, config_size=a.config, seed=a.seed)))
  rounds = {}
  with tempfile.TemporaryDirectory(prefix='avatar_latency.') as tmp:
    work = pathlib.Path(tmp)
    info = setup(a.config, work, a.seed)
    for round_index in range(a.rounds):
      for threads in THREADS:
        for label, kind, extra in rows:
          ms = run_worker(kind, work, threads, a.runs, **extra)['ms']
          rounds.setdefault((label, threads), []).append(ms)
          print(f'  round {round_index + 1}: {label}, {threads} thread(s): {ms:.0f} ms', file=sys.stderr)
  load_after = os.getloadavg()
  best = {key: min(values) for key, values in rounds.items()}
  size = info['config'].image_size
  print(f'## Per-avatar latency, {a.config} size ({size}x{size}), one source, no texture enhancer')
  print(f'\n{machine()}; median of {a.runs} runs, best of {a.rounds} interleaved rounds; load average before '
        f'{load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)')
  print(f'avatar graph conversion (FP32 + FP16): {info["conversion_s"]:.0f} s; files '
        f'{info["bytes"]["fp32"] / 2**20:.0f} MiB FP32, {info["bytes"]["fp16"] / 2**20:.0f} MiB FP16\n')
  ref = 'reference PyTorch' if a.reference else None
  print('| path | 1 thread (ms) | 2 threads (ms) | speed-up vs reference 1 t | 2 t |')
  print('|---|---:|---:|---:|---:|')
  for label, _, _ in rows:
    cells = [label] + [f'{best[label, t]:.0f}' for t in THREADS]
    cells += [f'{best[ref, t] / best[label, t]:.2f}x' if ref else 'n/a' for t in THREADS]
    print('| ' + ' | '.join(cells) + ' |')
  print('\nall rounds (ms): ' + '; '.join(f'{label} {t} t: ' + ', '.join(f'{v:.0f}' for v in rounds[label, t])
                                        for label, _, _ in rows for t in THREADS))
  if ref:
    print('\nGoal: the TFLite avatar graph at least 1.5x faster than the reference on 1 and 2 threads:')
    for label in ('TFLite avatar FP32', 'TFLite avatar FP16'):
      s1, s2 = best[ref, 1] / best[label, 1], best[ref, 2] / best[label, 2]
      print(f'  {label}: {s1:.2f}x / {s2:.2f}x -> {"met" if s1 >= 1.5 and s2 >= 1.5 else "NOT met"}')
  return 0


if __name__ == '__main__':
  sys.exit(main())

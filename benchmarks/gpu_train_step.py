"""Our training step against the authors' on one accelerator, side by side, plus the loop and bf16 tracking.

  python -m benchmarks.gpu_train_step --reference /path/to/bilayer-model --out benchmarks/results/gpu_train_step.json

Made for one GPU (the authors' per-GPU batch 5 at the paper size: their global 40 over 8 GPUs), and dry-run on
the CPU with `--size tiny --batch 2 --steps 2 --loop-steps 6 --track-steps 6`. Parts, all in one process:

1. The bare step, alternating: rounds of `--steps` of our step in float32, of ours with compute_dtype
   bfloat16, of the authors' stage-1 step in float32 (their networks and their flags, D given its gradient,
   docs/model.md B1) and, with `--autocast`, theirs under torch.autocast float16. Both sides run the same losses:
   adversarial, feature matching, L1, mask BCE, no perceptual term (the perceptual networks' weights are files
   a bare machine lacks; `benchmarks.train_step` does the same on the CPU). Per side: samples/s (median
   round), peak device memory, FLOP/s and MFU.
2. `bilayer-jax train`'s loop on synthetic data for `--loop-steps` steps (float32): samples/s from its logged
   step times against the bare step's, to show that the loop adds nothing measurable.
3. `--track-steps` steps of training in float32 and in bfloat16 from the same seed and data: the loss terms of
   both runs, their relative difference, and a plot.

FLOPs: 6 x the forward MACs of bilayer_jax.complexity (2 FLOPs a MAC, backward twice the forward) over the
passes one step makes, the same count for every side. MFU divides by `--peak-tflops` (default: the H200's dense BF16 tensor-core peak, 989 TFLOP/s; float32
steps run on TF32 tensor cores at half that peak when XLA is allowed to, so their MFU is against the same figure
and says so). Needs no TensorFlow: the synthetic batches and the loop run without it.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H200 SXM datasheet, dense (without sparsity)


def reference_step(reference: str, size: str, batch: int, device: str, autocast: bool):
  import torch

  from bilayer_jax import config as config_lib
  from tools import reference_parity

  run_step = reference_parity.reference_training_step(reference, config_lib.flags_of(size), batch, device=device,
                                                      autocast=autocast)

  def run():
    run_step()
    if device == 'cuda':
      torch.cuda.synchronize()

  start = time.time()
  run()
  return run, time.time() - start


def complexity_flops(size: str, batch: int) -> float:
  """6 x forward MACs of one step's passes (see the module docstring): every base network once per sample, D
  four times (real and fake for D's loss, again for G's)."""
  from bilayer_jax import complexity, config as config_lib

  macs = complexity.mac_counts(config_lib.get_config(size))
  per_sample = (macs['identity_embedder'] + macs['texture_generator'] + macs['keypoints_embedder']
                + macs['inference_generator'] + 4 * macs['discriminator'])
  return 6.0 * per_sample * batch


def jax_peak_bytes():
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def loop_throughput(size: str, batch: int, steps: int, dtype: str, workdir: pathlib.Path) -> dict:
  """`bilayer-jax train`'s loop on synthetic data: its logged seconds per step (the first window, which
  compiles, left out) and the loss history."""
  from bilayer_jax.train import loop, metrics_window
  from bilayer_jax.train.defaults import training_config

  config = training_config(size)
  config.training.perceptual = []
  config.training.batch_size = batch
  config.training.compute_dtype = dtype
  config.training.num_steps = steps
  config.training.bn_stats_batches = 0
  config.data.source = 'synthetic'
  config.image_every = 0
  config.checkpoint_every = 10 ** 9
  config.log_every = max(1, steps // 10)
  config.compilation_cache_dir = 'none'
  summary = loop.train(config, workdir, progress=False)
  records = [json.loads(line) for line in (workdir / metrics_window.METRICS_FILE).read_text().splitlines()]
  seconds = [r['seconds_per_step'] for r in records[1:] if r.get('seconds_per_step')]
  return {'steps': summary['step'], 'first_step_s': summary['first_step_s'],
          'samples_per_s': batch / statistics.median(seconds) if seconds else None,
          'history': metrics_window.read_history(workdir)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--reference', default=os.environ.get('BILAYER_REFERENCE'), help='bilayer-model checkout')
  p.add_argument('--size', default='paper')
  p.add_argument('--batch', type=int, default=5)
  p.add_argument('--steps', type=int, default=10, help='steps per side per round')
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--autocast', action='store_true', help="also the authors' step under torch.autocast float16")
  p.add_argument('--loop-steps', type=int, default=300)
  p.add_argument('--track-steps', type=int, default=300)
  p.add_argument('--peak-tflops', type=float, default=H200_BF16_DENSE_TFLOPS)
  p.add_argument('--out', default=None, help='JSON of every figure (and a PNG of the bf16 tracking beside it)')
  a = p.parse_args(argv)

  import jax

  device = jax.devices()[0]
  torch_device = 'cpu'
  versions = {'python': sys.version.split()[0], 'jax': jax.__version__, 'device': str(device.device_kind),
              'platform': device.platform}
  from benchmarks import train_step

  sides = {}
  for dtype in ('float32', 'bfloat16'):
    compile_s, sides[f'ours {dtype}'] = train_step.jax_step(a.size, a.batch, dtype)
    print(f'ours {dtype}: compile + first step {compile_s:.1f} s', file=sys.stderr, flush=True)
  peak_jax = jax_peak_bytes()
  if a.reference:
    import torch
    torch_device = 'cuda' if torch.cuda.is_available() else 'cpu'
    versions.update(torch=torch.__version__, torch_device=torch.cuda.get_device_name() if torch_device == 'cuda'
                    else 'cpu')
    for autocast in ((False, True) if a.autocast else (False,)):
      name = 'authors float32' if not autocast else 'authors autocast float16'
      try:
        sides[name], first_s = reference_step(a.reference, a.size, a.batch, torch_device, autocast)
        print(f'{name}: first step {first_s:.1f} s', file=sys.stderr, flush=True)
      except Exception as e:  # report, keep measuring the rest
        print(f'{name}: did not run ({type(e).__name__}: {e})', file=sys.stderr, flush=True)
  for run in sides.values():  # one more warm-up each
    run()
  times = {name: [] for name in sides}
  for r in range(a.rounds):
    for name, run in sides.items():
      start = time.time()
      for _ in range(a.steps):
        run()
      times[name].append((time.time() - start) / a.steps)
    print(f'round {r + 1}/{a.rounds}: ' + ', '.join(f'{n} {v[-1] * 1000:.1f} ms' for n, v in times.items()),
          file=sys.stderr, flush=True)
  estimate = complexity_flops(a.size, a.batch)
  rows = {}
  for name, values in times.items():
    step_s = statistics.median(values)
    # one FLOP count for every side (the same model and the same losses): complexity.py's
    rows[name] = {'step_ms': step_s * 1000, 'samples_per_s': a.batch / step_s,
                  'tflops': estimate / step_s / 1e12, 'mfu': estimate / step_s / (a.peak_tflops * 1e12)}
  if a.reference and torch_device == 'cuda':
    import torch
    peak_torch = torch.cuda.max_memory_allocated()
  else:
    peak_torch = None
  memory = {'ours (both dtypes, jax peak_bytes_in_use)': peak_jax, 'authors (torch max_memory_allocated)': peak_torch}

  with tempfile.TemporaryDirectory(prefix='gpu-bench-') as scratch:
    scratch = pathlib.Path(scratch)
    in_loop = loop_throughput(a.size, a.batch, a.loop_steps, 'float32', scratch / 'loop')
    tracks = {dtype: loop_throughput(a.size, a.batch, a.track_steps, dtype, scratch / f'track_{dtype}')['history']
              for dtype in ('float32', 'bfloat16')}
  terms = [k for k in tracks['float32'][0][1] if k.startswith(('G_', 'D_ADV')) and k != 'G_WPR']
  tracking = {}
  for term in terms:
    f32 = [m[term] for _, m in tracks['float32']]
    b16 = [m[term] for _, m in tracks['bfloat16']]
    rel = [abs(x - y) / max(abs(x), 1e-6) for x, y in zip(f32, b16)]
    tracking[term] = {'median_rel_diff': statistics.median(rel), 'max_rel_diff': max(rel),
                      'float32_last': f32[-1], 'bfloat16_last': b16[-1]}

  print(f'\n{a.size} size, batch {a.batch}, {a.rounds} rounds x {a.steps} steps per side; {versions}')
  print(f'FLOPs per step: {estimate:.3e} (6 x complexity.py MACs, used for every row)')
  print(f'| step | ms/step | samples/s | TFLOP/s | MFU (of {a.peak_tflops:g} TFLOP/s) |')
  print('|---|--:|--:|--:|--:|')
  for name, r in rows.items():
    print(f'| {name} | {r["step_ms"]:.1f} | {r["samples_per_s"]:.1f} | {r["tflops"]:.2f} | {r["mfu"]:.1%} |')
  base = rows.get('authors float32')
  if base:
    for name in ('ours float32', 'ours bfloat16'):
      print(f'{name} / authors float32: {rows[name]["samples_per_s"] / base["samples_per_s"]:.2f}x samples/s')
  print(f'peak memory: {memory}')
  if in_loop['samples_per_s']:
    print(f'loop (bilayer-jax train, synthetic data): {in_loop["samples_per_s"]:.1f} samples/s, median window after '
          f'the first of {in_loop["steps"]} steps (bare step: {rows["ours float32"]["samples_per_s"]:.1f})')
  for term, t in tracking.items():
    print(f'bf16 vs fp32 {term}: median rel diff {t["median_rel_diff"]:.3f}, max {t["max_rel_diff"]:.3f}')
  if a.out:
    out = pathlib.Path(a.out)
    out.write_text(json.dumps({'size': a.size, 'batch': a.batch, 'versions': versions, 'steps': rows,
                               'peak_memory_bytes': memory, 'complexity_flops_per_step': estimate,
                               'loop': {k: in_loop[k] for k in ('samples_per_s', 'steps', 'first_step_s')},
                               'bf16_tracking': tracking, 'tracks': tracks}, indent=2) + '\n')
    plot_tracks(tracks, terms, out.with_suffix('.png'))
  return 0


def plot_tracks(tracks: dict, terms: list, path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 3), dpi=110)
  for ax, term in zip(list(axes) if len(terms) > 1 else [axes], terms):
    for dtype, history in tracks.items():
      ax.plot([s for s, _ in history], [m[term] for _, m in history], label=dtype, lw=0.9)
    ax.set_title(term, fontsize=9)
    ax.set_xlabel('step')
  fig.axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


if __name__ == '__main__':
  raise SystemExit(main())

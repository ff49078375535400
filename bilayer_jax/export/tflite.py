"""The per-frame network of one avatar as FP32 and FP16 TFLite models, checked and measured (the export job).

  FoldedFrame (fold.py)
    --convert.py--> jax2tf trunk: keypoints (1, 2K) -> delta_uv, low_freq[, mask_logits]
                    + the TF warp (warp.py: GATHER on the constant texture) + add [+ sigmoid]
                    --TFLiteConverter--> model_fp32.tflite, model_fp16.tflite
    --gpu_compat.py (the delegate's rules), accuracy.py (interpreter vs model.render),
      interpreter.py (latency), litert_gpu.py (LiteRT's GPU accelerator, when a Vulkan driver exists:
      delegation, FP16 and FP32 arithmetic vs model.render, latency)--> report.json

Measuring on a phone (the GPU accelerator's latency here is lavapipe's, a software GPU, and says nothing
about a phone's speed):
  adb push model_fp16.tflite /data/local/tmp/
  adb push benchmark_model /data/local/tmp/     # LiteRT's prebuilt benchmark binary for android_arm64
  adb shell /data/local/tmp/benchmark_model --graph=/data/local/tmp/model_fp16.tflite \\
      --use_gpu=true --gpu_precision_loss_allowed=true --num_runs=100 --warmup_runs=10
Add --enable_op_profiling=true to see per-op times and whether every op ran on the GPU delegate.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import pathlib
import time

import numpy as np

from bilayer_jax.export import accuracy as accuracy_lib
from bilayer_jax.export import convert as convert_lib
from bilayer_jax.export import mixed_precision
from bilayer_jax.export import fold as fold_lib
from bilayer_jax.export import gpu_compat, interpreter, litert_gpu
from bilayer_jax.export.warp import WARPS

log = logging.getLogger(__name__)

FILES = ('model_fp32.tflite', 'model_fp16.tflite', 'report.json')


GPU_CHECKS = ('auto', 'require', 'off')
# What the export promises for a graph run by a GPU in FP16 (min over the checked poses).
GPU_MIN_PSNR_DB = 40.0
GPU_POSES = 4
GPU_LATENCY_RUNS = 5

class GpuIncompatibleError(ValueError):
  """The converted graph breaks the GPU delegate's rules (gpu_compat) or LiteRT's GPU accelerator did not
  take all of it (litert_gpu)."""


class GpuUnavailable(OSError):
  """gpu_check='require' and LiteRT's GPU accelerator found no GPU adapter."""


def _number(value) -> str:
  return '-' if value is None else f'{value:.1f}'


def _split_outputs(arrays) -> dict:
  """{'image': ..., 'mask': ...} from a run's outputs, told apart by channel count (as TFLiteFrame does)."""
  return {{3: 'image', 1: 'mask'}[int(a.shape[-1])]: a for a in arrays}


def gpu_file_report(data: bytes, inputs: list, score, latency_runs: int = GPU_LATENCY_RUNS) -> dict:
  """One file on LiteRT's GPU accelerator in FP16 arithmetic and with enforce_f32. inputs: per call the
  arrays of every input in the file's order; score(outputs per call) -> errors with psnr_db_min (against
  JAX). Returns {'adapter', 'fp16': {...}, 'fp32': {...}}, or {'available': False, 'reason'} without an adapter."""
  runs = litert_gpu.run_model(data, inputs, latency_runs=latency_runs)
  if not all(run.available for run in runs.values()):
    return dict(available=False, reason=next(run.reason for run in runs.values() if not run.available))
  entry = dict(adapter=runs['fp16'].adapter)
  for precision, run in runs.items():
    # Compiled but not run (run_error): the delegation verdict stands, there is nothing to score.
    errors = score(run.outputs) if run.outputs is not None else dict(psnr_db_min=None, run_error=run.run_error)
    entry[precision] = dict(fully_accelerated=run.fully_accelerated, cpu_ops=run.cpu_ops, partition=run.partition,
                            latency_ms=run.latency_ms, **errors)
  return entry


def gpu_runtime_checks(checks: dict, latency_runs: int = GPU_LATENCY_RUNS, gpu_check: str = 'auto', ready=None) -> dict:
  """checks: {file name: (bytes, inputs, score)} (see gpu_file_report). A file is `gpu_ready` only when the
  runtime accelerated all of it in FP16 at >= GPU_MIN_PSNR_DB (or when ready(entry) says so, for files whose
  accuracy has more than one measure). A file the runtime fails to run is reported with `run_failed` (its
  message) and is not GPU-ready. Without a GPU adapter: {'available': False, 'reason': ...}, or
  GpuUnavailable when gpu_check='require'."""
  if gpu_check == 'off':
    return dict(available=False, reason='not run (gpu_check=off)')
  report = {}
  for name, (data, inputs, score) in checks.items():
    try:
      entry = gpu_file_report(data, inputs, score, latency_runs)
    except RuntimeError as e:  # the runtime took the graph but failed running it: not GPU-ready, said why
      log.warning('%s failed on the GPU accelerator: %s', name, e)
      report[name] = dict(run_failed=str(e), gpu_ready=False,
                          fp16=dict(fully_accelerated=False, cpu_ops=[f'run failed: {e}'], partition=None))
      continue
    if entry.get('available') is False:
      if gpu_check == 'require':
        raise GpuUnavailable(f'LiteRT GPU accelerator unavailable ({entry["reason"]}); {litert_gpu.VULKAN_HINT}')
      log.warning('GPU accelerator check skipped: %s. %s', entry['reason'], litert_gpu.VULKAN_HINT)
      return entry
    fp16 = entry['fp16']
    entry['gpu_ready'] = bool(fp16['fully_accelerated'] and fp16.get('psnr_db_min') is not None and (
        ready(entry) if ready else fp16['psnr_db_min'] >= GPU_MIN_PSNR_DB))
    # The same bar with float32 arithmetic (a phone delegate without precision loss: slower, and the answer
    # when FP16 arithmetic falls short, as it does at the paper size: docs/export.md).
    fp32 = entry.get('fp32') or {}
    entry['gpu_ready_fp32_arithmetic'] = bool(fp32.get('fully_accelerated') and fp32.get('psnr_db_min') is not None
                                              and fp32['psnr_db_min'] >= GPU_MIN_PSNR_DB)
    report[name] = entry
  return dict(available=True, files=report)


def gpu_runtime_report(files: dict, keypoints, reference_images, latency_runs: int = GPU_LATENCY_RUNS,
                       gpu_check: str = 'auto') -> dict:
  """Every per-frame file (input: keypoints) on LiteRT's GPU accelerator in FP16 arithmetic and with
  enforce_f32: fully accelerated or which ops fell back (the runtime's own lines), PSNR against the JAX
  render, latency (software GPU); see gpu_runtime_checks."""
  inputs = [[np.asarray(k, np.float32).reshape(1, -1)] for k in keypoints]
  score = lambda outputs: accuracy_lib.image_errors(
      np.stack([_split_outputs(out)['image'][0] for out in outputs]), reference_images)
  return gpu_runtime_checks({name: (data, inputs, score) for name, data in files.items()}, latency_runs, gpu_check)


def _random_keypoints(num: int, seed: int, num_keypoints: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.uniform(-0.8, 0.8, (num, num_keypoints, 2)).astype(np.float32)


def _versions() -> dict:
  out = {}
  for name in ('jax', 'tensorflow', 'ai_edge_litert'):
    try:
      module = importlib.import_module(name)
      out[name] = getattr(module, '__version__', 'unknown')
    except ImportError:
      pass
  return out


def check_output(out_dir) -> pathlib.Path:
  """The export folder, refused before any work when it is a file or already holds an export's files."""
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists() and not out_dir.is_dir():
    raise NotADirectoryError(f'--out {out_dir} is a file; give a folder for the export')
  existing = [name for name in FILES if (out_dir / name).exists()]
  if existing:
    raise FileExistsError(f'{out_dir} already holds {", ".join(existing)}; choose another folder or remove them')
  return out_dir


def export_avatar(model, avatar, out_dir, with_mask: bool = False, allow_cpu_ops: bool = False,
                  latency_runs: int = 50, keypoints=None, num_poses: int = 8, seed: int = 0,
                  fp32_min_psnr: float = accuracy_lib.FP32_MIN_PSNR_DB, fp32_warp: str = 'taps',
                  fp16_warp: str = 'patches', gpu_check: str = 'auto') -> dict:
  """Write model_fp32.tflite, model_fp16.tflite and report.json for one avatar into out_dir.

  model: a `Bilayer`; avatar: from model.create_avatar (one identity). with_mask: also output the
  predicted foreground mask. keypoints: optional (N, 68, 2) poses for the accuracy check (real ones
  when you have them); otherwise num_poses random poses. latency_runs: invokes per measurement (median),
  at 1 and 2 interpreter threads; 0 skips timing. fp32_warp / fp16_warp: how each file samples the
  texture (tf_warp: 'patches' stays exact when a GPU computes in FP16, 'taps' is cheaper on a CPU).
  Refuses to overwrite any of the three files. Raises GpuIncompatibleError (nothing written) when
  the graph breaks the GPU delegate rules, or LiteRT's GPU accelerator leaves any op of it to the CPU,
  unless allow_cpu_ops (then the violations are only reported: those ops would run on the CPU).
  gpu_check: 'auto' runs every file on LiteRT's GPU accelerator when a GPU adapter (any Vulkan driver)
  exists, 'require' fails without one, 'off' skips it (report['gpu_runtime']; see gpu_runtime_report).
  Raises RuntimeError when the FP32 file's PSNR against JAX is below fp32_min_psnr dB on any pose, or its
  mask is off by more than accuracy.FP32_MAX_ABS_MASK (a conversion bug, not a precision matter). The FP16
  file keeps its small constants in float32, and large ones where its PSNR on the check poses would fall
  below mixed_precision.TARGET_PSNR_DB (report['fp16_float32_constants']). Returns the report.
  """
  out_dir = pathlib.Path(out_dir)
  for warp in (fp32_warp, fp16_warp):
    if warp not in WARPS:
      raise ValueError(f'unknown warp {warp!r}; expected one of {WARPS}')
  if gpu_check not in GPU_CHECKS:
    raise ValueError(f'gpu_check must be one of {GPU_CHECKS}, got {gpu_check!r}')
  check_output(out_dir)
  config = model.config
  if keypoints is None:
    keypoints, pose_source = _random_keypoints(num_poses, seed, config.num_keypoints), 'random'
  else:
    keypoints, pose_source = np.asarray(keypoints, np.float32), 'given'
    if keypoints.ndim != 3 or keypoints.shape[1:] != (config.num_keypoints, 2) or not len(keypoints):
      raise ValueError(f'keypoints must be (N, {config.num_keypoints}, 2), got {keypoints.shape}')

  start = time.perf_counter()
  folded = fold_lib.fold_frame(model, avatar)
  # The FP16 file is scored as written, and large constants go back to float32 where it needs them.
  fp16_score = mixed_precision.frame_score(keypoints, accuracy_lib.jax_reference(model, avatar, keypoints)[0])
  fp32, fp16, fp16_constants = convert_lib.convert(folded, with_mask, fp32_warp, fp16_warp, fp16_score)
  conversion_s = time.perf_counter() - start
  log.info('converted in %.1f s: FP32 %d bytes, FP16 %d bytes', conversion_s, len(fp32), len(fp16))

  verdicts = {'model_fp32.tflite': gpu_compat.check(fp32), 'model_fp16.tflite': gpu_compat.check(fp16)}
  compatible = all(v.compatible for v in verdicts.values())
  if not compatible:
    message = '\n'.join(f'{name}: {v.summary()}' for name, v in verdicts.items() if not v.compatible)
    if not allow_cpu_ops:
      raise GpuIncompatibleError(f'the exported graph is not GPU-compatible (pass allow_cpu_ops=True to '
                                 f'export anyway):\n{message}')
    log.warning('exporting a graph with ops the GPU delegate will leave to the CPU:\n%s', message)

  accuracy = accuracy_lib.compare_with_jax(model, avatar, fp32, fp16, keypoints, folded, fp16_warp)
  accuracy['pose_source'] = pose_source
  accuracy['psnr_peak'] = accuracy_lib.PSNR_PEAK
  if not accuracy['fp32']['psnr_db_min'] >= fp32_min_psnr:  # 'not >=': a NaN PSNR is refused too
    raise RuntimeError(f'the FP32 TFLite model is {accuracy["fp32"]["psnr_db_min"]:.1f} dB from the JAX render on its '
                       f'worst pose (< {fp32_min_psnr:g} dB; max abs {accuracy["fp32"]["max_abs_image"]:.3g}): '
                       'the conversion is wrong; nothing was written')
  if not accuracy['fp32'].get('max_abs_mask', 0.0) <= accuracy_lib.FP32_MAX_ABS_MASK:
    raise RuntimeError(f'the FP32 TFLite model\'s mask differs from the JAX render by '
                       f'{accuracy["fp32"]["max_abs_mask"]:.3g} (> {accuracy_lib.FP32_MAX_ABS_MASK:g}): '
                       'the conversion is wrong; nothing was written')
  # A software GPU takes seconds per paper-size frame: a few poses and timed runs tell what is needed.
  gpu_poses = keypoints[:GPU_POSES]
  reference_images, _ = accuracy_lib.jax_reference(model, avatar, gpu_poses)
  gpu_runtime = gpu_runtime_report({'model_fp32.tflite': fp32, 'model_fp16.tflite': fp16}, gpu_poses,
                                   reference_images, min(latency_runs, GPU_LATENCY_RUNS), gpu_check)
  if gpu_runtime['available']:
    fallbacks = {name: entry['fp16'] for name, entry in gpu_runtime['files'].items()
                 if not entry['fp16']['fully_accelerated']}
    if fallbacks:
      message = '\n'.join(f'{name}: LiteRT\'s GPU accelerator left ops to the CPU: '
                          f'{"; ".join(e["cpu_ops"]) or "(no reason logged)"} {e["partition"] or ""}'
                          for name, e in fallbacks.items())
      if not allow_cpu_ops:
        raise GpuIncompatibleError(f'the exported graph is not fully GPU-accelerated (pass allow_cpu_ops=True '
                                   f'to export anyway):\n{message}')
      log.warning('exporting a graph the GPU accelerator only partly runs:\n%s', message)
    for name, entry in gpu_runtime['files'].items():
      log.info('%s on the GPU accelerator: fully accelerated %s, FP16 arithmetic %s dB (min), enforce_f32 %s dB, '
               '%s ms on %s', name, entry['fp16']['fully_accelerated'], _number(entry['fp16']['psnr_db_min']),
               _number(entry['fp32']['psnr_db_min']), _number(entry['fp16']['latency_ms']), entry['adapter'])
  latency = {}
  if latency_runs:
    for name, data in (('fp32', fp32), ('fp16', fp16)):
      latency[name] = {str(n): interpreter.latency_ms(data, n, latency_runs) for n in (1, 2)}
  backend, _ = interpreter.interpreter_backend()
  report = dict(
      model=dict(size=config.get('size', None), image_size=config.image_size, with_mask=with_mask,
                 inputs='keypoints (1, 136) float32, interleaved (x, y) in [-1, 1] crop coordinates',
                 outputs='image (1, H, W, 3) in about [-2, 2]'
                 + ('; mask (1, H, W, 1) in [0, 1]' if with_mask else '')),
      files={name: dict(bytes=len(data), warp=warp, ops=verdicts[name].histogram, gpu=verdicts[name].to_dict())
             for name, data, warp in (('model_fp32.tflite', fp32, fp32_warp),
                                      ('model_fp16.tflite', fp16, fp16_warp))},
      fp16_float32_constants=fp16_constants,
      gpu_compatible=compatible, allow_cpu_ops=allow_cpu_ops, gpu_runtime=gpu_runtime,
      gpu_ready={name: entry['gpu_ready'] for name, entry in gpu_runtime.get('files', {}).items()} or None,
      accuracy=accuracy,
      latency_ms=dict(runs=latency_runs, interpreter=backend, cpu_count=os.cpu_count(), **latency),
      conversion_s=conversion_s, versions=_versions())

  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  try:
    for name, data in (('model_fp32.tflite', fp32), ('model_fp16.tflite', fp16),
                       ('report.json', (json.dumps(report, indent=2) + '\n').encode())):
      with open(out_dir / name, 'xb') as f:  # 'x': never replace a file that appeared meanwhile
        written.append(out_dir / name)
        f.write(data)
  except BaseException:
    for path in written:  # only files this call created: no half-written export stays behind
      path.unlink(missing_ok=True)
    raise
  return report


def export_checkpoint(checkpoint_dir, source_image, source_keypoints, source_mask, out_dir,
                      enhance: bool | None = None, with_mask: bool = False, allow_cpu_ops: bool = False,
                      latency_runs: int = 50, keypoints=None, num_poses: int = 8, seed: int = 0,
                      fp32_warp: str = 'taps', fp16_warp: str = 'patches', gpu_check: str = 'auto') -> dict:
  """Load a checkpoint, make the avatar of one source photo and export it (see export_avatar).

  source_image (H, W, 3) in [-1, 1], source_keypoints (68, 2) in [-1, 1], source_mask (H, W[, 1]) in [0, 1]
  or None (the source is then not masked before the identity embedder).
  enhance: run the texture enhancer; None = when the checkpoint has one. Without keypoints the accuracy
  check uses the source pose and num_poses - 1 jittered copies of it (real face layouts) instead of
  random points.
  """
  import bilayer_jax

  model = bilayer_jax.load(checkpoint_dir)
  if enhance is None:
    enhance = 'texture_enhancer' in model.variables
  avatar = model.create_avatar(source_image, source_keypoints, source_mask, enhance=enhance)
  if keypoints is None:
    source = np.asarray(source_keypoints, np.float32).reshape(1, -1, 2)
    rng = np.random.default_rng(seed)
    jitter = rng.normal(0.0, 0.02, (max(num_poses - 1, 0),) + source.shape[1:]).astype(np.float32)
    keypoints = np.clip(np.concatenate([source, source + jitter]), -1.0, 1.0)
  return export_avatar(model, avatar, out_dir, with_mask=with_mask, allow_cpu_ops=allow_cpu_ops,
                       latency_runs=latency_runs, keypoints=keypoints, seed=seed, fp32_warp=fp32_warp,
                       fp16_warp=fp16_warp, gpu_check=gpu_check)

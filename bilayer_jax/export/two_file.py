"""One pair of files for every avatar: the per-avatar and the per-frame graph, checked and measured (the job
of `bilayer-jax export CHECKPOINT --out DIR` without --source), and running them without JAX.

  model --avatar_graph.py--> avatar_fp32.tflite, avatar_fp16.tflite
            image, stickman (1, H, W, 3), mask (1, H, W, 1) -> texture (1, H, W, 3), avatar_params (1, P)
        --frame_graph.py---> frame_fp32.tflite ('taps' warp), frame_fp16.tflite ('patches' warp)
            keypoints (1, 136), texture, avatar_params -> image (1, H, W, 3)[, mask (1, H, W, 1)]
  checks (report.json): CPU interpreter against JAX (texture and avatar_params against
  model.create_avatar(..., enhance=False); frames against model.render with the JAX avatar's inputs; and
  end to end, avatar file -> frame file of the same precision); LiteRT's GPU accelerator on every file
  (tflite.gpu_runtime_checks); CPU latency at 1 and 2 threads.

On the phone: run the avatar graph once on the photo (the stickman drawn by the app from the 68 keypoints,
as data_pipelines.faces.stickman draws it; mask all ones when there is none), keep its two outputs, and
feed them with every frame's keypoints to the frame graph. The texture enhancer is absent
(avatar_graph.py says why): two-file avatars are the un-enhanced ones.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import time

import numpy as np

log = logging.getLogger(__name__)

FILES = ('avatar_fp32.tflite', 'avatar_fp16.tflite', 'frame_fp32.tflite', 'frame_fp16.tflite', 'report.json')
AVATAR_INPUTS = ('image', 'stickman', 'mask')
FRAME_INPUTS = ('keypoints', 'texture', 'avatar_params')
# A conversion bug (swapped channels, a dropped layer) costs far more than this; float32 rounding far less.
# The same bound as accuracy.FP32_MIN_PSNR_DB (a literal: this module loads without JAX for animate).
FP32_MIN_PSNR_DB = 60.0


def is_pair(path) -> bool:
  """Whether path is a folder holding a two-file export (both graphs of at least one precision)."""
  path = pathlib.Path(path)
  return path.is_dir() and any((path / f'avatar_{p}.tflite').is_file() and (path / f'frame_{p}.tflite').is_file()
                               for p in ('fp32', 'fp16'))


# ----------------------------------------------------------------------------------------------------
# Running the pair (no JAX: the interpreter, numpy and the stickman drawing)


def _named(graph, outputs: list, kind: str) -> dict:
  """Outputs told apart by shape: avatar graph (1, P) avatar_params / (1, H, W, 3) texture; frame graph
  image (C = 3) / mask (C = 1)."""
  if kind == 'avatar':
    return {('avatar_params' if out.ndim == 2 else 'texture'): out for out in outputs}
  return {{3: 'image', 1: 'mask'}[int(out.shape[-1])]: out for out in outputs}


class TwoFileAvatar:
  """The two graphs of an export folder in the TFLite interpreter.

    pair = TwoFileAvatar(folder, 'fp16')
    avatar = pair.create_avatar(image (H, W, 3) in [-1, 1], keypoints (68, 2) in [-1, 1], mask=None)
    images = pair.render(avatar, keypoints (N, 68, 2))          # (N, H, W, 3)
  """

  def __init__(self, folder, precision: str = 'fp16', num_threads: int = 1):
    from bilayer_jax.export.interpreter import TFLiteGraph

    folder = pathlib.Path(folder)
    if precision not in ('fp32', 'fp16'):
      raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    paths = [folder / f'avatar_{precision}.tflite', folder / f'frame_{precision}.tflite']
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
      raise FileNotFoundError(f'{", ".join(missing)} not found: give a folder written by `bilayer-jax export '
                              'CHECKPOINT --out DIR` (without --source)')
    self.avatar_graph = TFLiteGraph(paths[0].read_bytes(), num_threads)
    self.frame_graph = TFLiteGraph(paths[1].read_bytes(), num_threads)
    for graph, names, path in ((self.avatar_graph, AVATAR_INPUTS, paths[0]), (self.frame_graph, FRAME_INPUTS, paths[1])):
      if sorted(graph.input_names) != sorted(names):
        raise ValueError(f'{path} takes inputs {graph.input_names}, not {list(names)}: not a two-file export graph')
    self.image_size = int(self.avatar_graph.inputs['image']['shape'][1])
    self.num_keypoints = int(self.frame_graph.inputs['keypoints']['shape'][1]) // 2

  def create_avatar(self, image, keypoints, mask=None) -> dict:
    """{'texture': (1, H, W, 3), 'avatar_params': (1, P)} of one source photo crop."""
    from data_pipelines.faces.stickman import draw_stickman

    s = self.image_size
    image = np.asarray(image, np.float32)
    if image.shape != (s, s, 3):
      raise ValueError(f'image must be ({s}, {s}, 3) in [-1, 1], got {image.shape}')
    keypoints = np.asarray(keypoints, np.float32)
    if keypoints.shape != (self.num_keypoints, 2):
      raise ValueError(f'keypoints must be ({self.num_keypoints}, 2), got {keypoints.shape}')
    mask = np.ones((s, s, 1), np.float32) if mask is None else np.asarray(mask, np.float32).reshape(s, s, 1)
    outputs = self.avatar_graph(dict(image=image[None], stickman=draw_stickman(keypoints, s)[None], mask=mask[None]))
    return _named(self.avatar_graph, outputs, 'avatar')

  def render_frame(self, avatar: dict, keypoints) -> dict:
    """{'image': (1, H, W, 3)[, 'mask']} for keypoints (68, 2)."""
    outputs = self.frame_graph(dict(keypoints=np.asarray(keypoints, np.float32).reshape(1, -1), **avatar))
    return _named(self.frame_graph, outputs, 'frame')

  def render(self, avatar: dict, keypoints) -> np.ndarray:
    return np.stack([self.render_frame(avatar, k)['image'][0] for k in np.asarray(keypoints, np.float32)])


# ----------------------------------------------------------------------------------------------------
# The export job


def convert_pair(model, with_mask: bool = False, fp32_warp: str = 'taps', fp16_warp: str = 'patches',
                 frame_fp16_score=None) -> dict:
  """{file name: .tflite bytes} of both graphs at both precisions. frame_fp16_score(bytes) -> dB: the frame
  FP16 file's accuracy, by which mixed_precision.fp16_file keeps large constants in float32 where needed."""
  from bilayer_jax.export import avatar_graph, convert, frame_graph

  folded_avatar = avatar_graph.fold_avatar(model)
  shared = frame_graph.fold_shared(model)
  with convert.scratch_tempdir():
    avatar_fn = avatar_graph.tf_avatar_function(folded_avatar)
    return {'avatar_fp32.tflite': convert.to_tflite(avatar_fn, fp16=False),
            'avatar_fp16.tflite': convert.to_tflite(avatar_fn, fp16=True),
            'frame_fp32.tflite': convert.to_tflite(frame_graph.tf_frame_function(shared, with_mask, fp32_warp), fp16=False),
            'frame_fp16.tflite': convert.to_tflite(frame_graph.tf_frame_function(shared, with_mask, fp16_warp), fp16=True,
                                                   score=frame_fp16_score)}


def check_output(out_dir) -> pathlib.Path:
  """The export folder, refused before any work when it is a file or already holds an export's files."""
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists() and not out_dir.is_dir():
    raise NotADirectoryError(f'--out {out_dir} is a file; give a folder for the export')
  from bilayer_jax.export import tflite
  existing = [name for name in FILES + tflite.FILES if (out_dir / name).exists()]
  if existing:
    raise FileExistsError(f'{out_dir} already holds {", ".join(existing)}; choose another folder or remove them')
  return out_dir


def random_sources(config, num: int, seed: int) -> list:
  """(image, keypoints, mask) check inputs when no photo is given: uniform images, keypoints and soft masks."""
  rng = np.random.default_rng(seed)
  s = config.image_size
  return [(rng.uniform(-1, 1, (s, s, 3)).astype(np.float32),
           rng.uniform(-0.7, 0.7, (config.num_keypoints, 2)).astype(np.float32),
           rng.uniform(0, 1, (s, s, 1)).astype(np.float32)) for _ in range(num)]


def _params_errors(params, reference) -> dict:
  """avatar_params against JAX's: max abs, max abs relative to the largest |value|, PSNR over their range."""
  params, reference = np.asarray(params, np.float64), np.asarray(reference, np.float64)
  peak = float(reference.max() - reference.min())
  error = float(np.abs(params - reference).max())
  mse = max(float(np.mean((params - reference) ** 2)), 1e-30)
  return dict(max_abs=error, max_rel=error / float(np.abs(reference).max()),
              psnr_db=float(10.0 * np.log10(peak ** 2 / mse)))


def _summarize(per_source: list) -> dict:
  keys = per_source[0].keys()
  out = {}
  for key in keys:
    values = [entry[key] for entry in per_source]
    out[key] = min(values) if key.startswith('psnr') else max(values)
  return out


def _source_inputs(source, config):
  from data_pipelines.faces.stickman import draw_stickman
  image, keypoints, mask = source
  s = config.image_size
  mask = np.ones((s, s, 1), np.float32) if mask is None else np.asarray(mask, np.float32).reshape(s, s, 1)
  return dict(image=image[None], stickman=draw_stickman(keypoints, s)[None], mask=mask[None])


def export_pair(model, out_dir, sources=None, source_kind: str = 'random', with_mask: bool = False,
                allow_cpu_ops: bool = False, latency_runs: int = 20, num_sources: int = 2, num_poses: int = 4,
                seed: int = 0, fp32_warp: str = 'taps', fp16_warp: str = 'patches', gpu_check: str = 'auto') -> dict:
  """Write the two graphs at both precisions and report.json into out_dir (see the module docstring).

  sources: [(image (H, W, 3) in [-1, 1], keypoints (68, 2), mask (H, W, 1) or None)] for the checks (real
  face crops when you have them); otherwise num_sources random ones. Each source's own pose and num_poses - 1
  jittered copies drive the frame checks. Refuses to overwrite existing export files. Raises RuntimeError when
  an FP32 file is below FP32_MIN_PSNR_DB against JAX (a conversion bug), tflite.GpuIncompatibleError when a
  graph breaks the GPU rules or LiteRT's GPU accelerator leaves ops to the CPU (unless allow_cpu_ops).
  """
  from bilayer_jax.export import accuracy as accuracy_lib
  from bilayer_jax.export import frame_graph, gpu_compat, interpreter, tflite
  from bilayer_jax.export.interpreter import TFLiteGraph
  from bilayer_jax.export.warp import WARPS

  for warp in (fp32_warp, fp16_warp):
    if warp not in WARPS:
      raise ValueError(f'unknown warp {warp!r}; expected one of {WARPS}')
  if gpu_check not in tflite.GPU_CHECKS:
    raise ValueError(f'gpu_check must be one of {tflite.GPU_CHECKS}, got {gpu_check!r}')
  out_dir = check_output(out_dir)
  config = model.config
  if sources is None:
    sources, source_kind = random_sources(config, num_sources, seed), 'random'

  # JAX references: the avatar of every source, its avatar_params, and frames at its pose and jittered ones.
  rng = np.random.default_rng(seed)
  references = []
  for image, keypoints, mask in sources:
    avatar = model.create_avatar(image, keypoints, mask, enhance=False)
    poses = np.clip(np.concatenate([keypoints[None], keypoints[None] + rng.normal(
        0.0, 0.02, (max(num_poses - 1, 0),) + keypoints.shape).astype(np.float32)]), -1.0, 1.0)
    images, masks = accuracy_lib.jax_reference(model, avatar, poses)
    references.append(dict(avatar=dict(texture=np.asarray(avatar.texture, np.float32),
                                       avatar_params=frame_graph.pack_params(model, avatar.inference_params)),
                           poses=poses, images=images, masks=masks))

  def frame_inputs(avatar, poses):
    return [dict(keypoints=k.reshape(1, -1), **avatar) for k in poses]

  def frame_errors(outputs_per_call, ref):
    named = [_named(None, outputs, 'frame') for outputs in outputs_per_call]
    errors = accuracy_lib.image_errors(np.stack([n['image'][0] for n in named]), ref['images'])
    if with_mask and ref['masks'] is not None:
      errors['max_abs_mask'] = float(np.abs(np.stack([n['mask'][0] for n in named]) - ref['masks']).max())
    return errors

  def frame_fp16_score(data: bytes) -> float:
    frame_file = TFLiteGraph(data)
    return min(frame_errors([frame_file(x) for x in frame_inputs(ref['avatar'], ref['poses'])], ref)['psnr_db_min']
               for ref in references)

  start = time.perf_counter()
  files = convert_pair(model, with_mask, fp32_warp, fp16_warp, frame_fp16_score)
  conversion_s = time.perf_counter() - start
  log.info('converted in %.1f s: %s', conversion_s, ', '.join(f'{n} {len(d)} bytes' for n, d in files.items()))

  verdicts = {name: gpu_compat.check(data) for name, data in files.items()}
  broken = {name: v for name, v in verdicts.items() if not v.compatible}
  if broken:
    message = '\n'.join(f'{name}: {v.summary()}' for name, v in broken.items())
    if not allow_cpu_ops:
      raise tflite.GpuIncompatibleError(f'the exported graphs are not GPU-compatible (pass allow_cpu_ops=True to '
                                        f'export anyway):\n{message}')
    log.warning('exporting graphs with ops the GPU delegate will leave to the CPU:\n%s', message)

  def avatar_errors(named, ref):
    texture = accuracy_lib.image_errors(named['texture'], ref['avatar']['texture'])
    return dict(texture_psnr_db=texture['psnr_db_min'], texture_max_abs=texture['max_abs_image'],
                **{f'params_{k}': v for k, v in _params_errors(named['avatar_params'], ref['avatar']['avatar_params']).items()})

  accuracy = dict(sources=source_kind, num_sources=len(sources), poses_per_source=num_poses,
                  psnr_peak=accuracy_lib.PSNR_PEAK, reference='model.create_avatar(..., enhance=False), model.render')
  cpu_frame = TFLiteGraph(files['frame_fp32.tflite'])  # renders the GPU's avatars in the accelerator check
  for precision in ('fp32', 'fp16'):
    avatar_file, frame_file = TFLiteGraph(files[f'avatar_{precision}.tflite']), TFLiteGraph(files[f'frame_{precision}.tflite'])
    per_avatar, per_frame, end_to_end = [], [], []
    for source, ref in zip(sources, references):
      made = _named(avatar_file, avatar_file(_source_inputs(source, config)), 'avatar')
      per_avatar.append(avatar_errors(made, ref))
      per_frame.append(frame_errors([frame_file(x) for x in frame_inputs(ref['avatar'], ref['poses'])], ref))
      end_to_end.append(frame_errors([frame_file(x) for x in frame_inputs(made, ref['poses'])], ref))
    accuracy[f'avatar_{precision}'] = _summarize(per_avatar)
    accuracy[f'frame_{precision}'] = _summarize(per_frame)
    accuracy[f'end_to_end_{precision}'] = _summarize(end_to_end)
  fp32_worst = min(accuracy['avatar_fp32']['texture_psnr_db'], accuracy['frame_fp32']['psnr_db_min'],
                   accuracy['end_to_end_fp32']['psnr_db_min'])
  if fp32_worst < FP32_MIN_PSNR_DB:
    raise RuntimeError(f'an FP32 TFLite graph is at {fp32_worst:.1f} dB against JAX (< {FP32_MIN_PSNR_DB} dB): the '
                       f'conversion is wrong; nothing was written ({json.dumps(accuracy)})')

  # LiteRT's GPU accelerator: the avatar files on every source (texture, params, and the frames the CPU
  # FP32 frame file renders from the GPU's avatar), the frame files on the JAX avatar of every source.
  def avatar_order(x):
    return [x[d['name']] for d in TFLiteGraph(files['avatar_fp32.tflite']).inputs.values()]

  avatar_calls = [avatar_order(_source_inputs(source, config)) for source in sources]
  frame_order = list(cpu_frame.inputs)
  frame_calls = [[x[name] for name in frame_order] for ref in references for x in frame_inputs(ref['avatar'], ref['poses'])]

  def score_avatar(outputs_per_call):
    per_source = []
    for outputs, ref in zip(outputs_per_call, references):
      made = _named(None, outputs, 'avatar')
      errors = avatar_errors(made, ref)
      frames = frame_errors([cpu_frame(x) for x in frame_inputs(made, ref['poses'])], ref)
      errors['frames_psnr_db'] = frames['psnr_db_min']
      per_source.append(errors)
    out = _summarize(per_source)
    out['psnr_db_min'] = min(out['texture_psnr_db'], out['frames_psnr_db'])
    return out

  def score_frame(outputs_per_call):
    per_source, n = [], num_poses
    for i, ref in enumerate(references):
      per_source.append(frame_errors(outputs_per_call[i * n:(i + 1) * n], ref))
    return _summarize(per_source)

  checks = {}
  for name, data in files.items():
    checks[name] = (data, avatar_calls, score_avatar) if name.startswith('avatar') else (data, frame_calls, score_frame)
  gpu_runtime = tflite.gpu_runtime_checks(checks, min(latency_runs, tflite.GPU_LATENCY_RUNS), gpu_check)
  if gpu_runtime['available']:
    fallbacks = {name: entry['fp16'] for name, entry in gpu_runtime['files'].items() if not entry['fp16']['fully_accelerated']}
    if fallbacks:
      message = '\n'.join(f'{name}: LiteRT\'s GPU accelerator left ops to the CPU: {"; ".join(e["cpu_ops"]) or "(no reason logged)"} '
                          f'{e["partition"] or ""}' for name, e in fallbacks.items())
      if not allow_cpu_ops:
        raise tflite.GpuIncompatibleError(f'the exported graphs are not fully GPU-accelerated (pass allow_cpu_ops=True '
                                          f'to export anyway):\n{message}')
      log.warning('exporting graphs the GPU accelerator only partly runs:\n%s', message)

  latency = {}
  if latency_runs:
    latency = {name: {str(n): interpreter.latency_ms(data, n, latency_runs) for n in (1, 2)} for name, data in files.items()}
  shared_layout = frame_graph.param_layout(frame_graph.block_channels(model))
  backend, _ = interpreter.interpreter_backend()
  s = config.image_size
  report = dict(
      model=dict(size=config.get('size', None), image_size=s, with_mask=with_mask, enhancer='absent (avatar_graph.py)'),
      interface=dict(
          avatar=dict(inputs=f'image (1, {s}, {s}, 3) in [-1, 1]; stickman (1, {s}, {s}, 3) drawn from the 68 keypoints '
                             f'(data_pipelines.faces.stickman); mask (1, {s}, {s}, 1) in [0, 1], ones for none',
                      outputs=f'texture (1, {s}, {s}, 3); avatar_params (1, {sum(n for _, n in shared_layout)})'),
          frame=dict(inputs=f'keypoints (1, {2 * config.num_keypoints}) interleaved (x, y) in [-1, 1]; texture and '
                            'avatar_params from the avatar graph',
                     outputs=f'image (1, {s}, {s}, 3)' + (f'; mask (1, {s}, {s}, 1)' if with_mask else '')),
          avatar_params_layout=[[name, n] for name, n in shared_layout]),
      files={name: dict(bytes=len(data), ops=verdicts[name].histogram, gpu=verdicts[name].to_dict(),
                        **({'warp': fp32_warp if 'fp32' in name else fp16_warp} if name.startswith('frame') else {}))
             for name, data in files.items()},
      gpu_compatible=not broken, allow_cpu_ops=allow_cpu_ops, gpu_runtime=gpu_runtime,
      gpu_ready={name: entry['gpu_ready'] for name, entry in gpu_runtime.get('files', {}).items()} or None,
      accuracy=accuracy, latency_ms=dict(runs=latency_runs, interpreter=backend, cpu_count=os.cpu_count(), **latency),
      conversion_s=conversion_s, versions=tflite._versions())

  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  try:
    for name, data in list(files.items()) + [('report.json', (json.dumps(report, indent=2) + '\n').encode())]:
      with open(out_dir / name, 'xb') as f:  # 'x': never replace a file that appeared meanwhile
        written.append(out_dir / name)
        f.write(data)
  except BaseException:
    for path in written:  # only files this call created
      path.unlink(missing_ok=True)
    raise
  return report


def export_checkpoint_pair(checkpoint_dir, out_dir, photos=(), landmarks: str = 'dlib', **kwargs) -> dict:
  """Load a checkpoint and export its pair; photos: image files whose face crops drive the checks (random
  inputs without any)."""
  import bilayer_jax

  check_output(out_dir)
  model = bilayer_jax.load(checkpoint_dir)
  sources, kind = None, 'random'
  if photos:
    from bilayer_jax.images import read_image
    from data_pipelines.faces import crop as crop_lib
    from data_pipelines.faces import landmarks as landmarks_lib

    backend = landmarks_lib.make_backend(landmarks)
    sources = []
    for photo in photos:
      face = crop_lib.prepare_face(read_image(photo), backend, model.config.image_size)
      sources.append((face['image'], face['keypoints'], None))
    kind = f'photos: {", ".join(str(p) for p in photos)}'
  return export_pair(model, out_dir, sources=sources, source_kind=kind, **kwargs)

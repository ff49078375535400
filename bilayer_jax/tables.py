"""The paper's tables as Markdown (`bilayer-jax tables --out DIR`): complexity, speed, quality, and the
quality-vs-MACs plot.

Complexity is computed here from shapes (parameters and MACs of every network for every model size). Speed
and quality come from files this project writes: an export `report.json` (per-frame TFLite latency measured
on this CPU) and an `evaluate` JSON (self-reenactment metrics); the paper's own figures are printed beside
them and labelled as the paper's. The tables say which checkpoint and data produced each number.
"""
from __future__ import annotations

import json
import pathlib

from bilayer_jax import complexity
from bilayer_jax import config as config_lib
from bilayer_jax.evaluate import PAPER_MEDIUM

PAPER_PHONE_MS = 42.0  # Snapdragon 855 (Adreno 640), FP16, per frame: the paper's project page


def complexity_table(sizes=('paper', 'small', 'tiny')) -> tuple[str, dict]:
  reports = {s: complexity.report(config_lib.get_config(s)) for s in sizes}
  lines = ['## Complexity (computed from the model definitions)', '',
           '| network | ' + ' | '.join(f'{s}: parameters | {s}: MACs' for s in sizes) + ' |',
           '|---|' + '--:|--:|' * len(sizes)]
  for key, label, when in complexity.ROWS:
    cells = []
    for s in sizes:
      cells += [f'{reports[s].parameters[key]:,}', f'{reports[s].macs[key]:,}']
    lines.append(f'| {label} ({when}) | ' + ' | '.join(cells) + ' |')
  lines.append('| **per frame** (keypoints MLP + inference generator + warp) | ' + ' | '.join(
      f' | {reports[s].per_frame:,}' for s in sizes).lstrip(' |') + ' |')
  lines.append('| **per frame, skip convs before upsampling** | ' + ' | '.join(
      f' | {reports[s].per_frame_rewritten:,}' for s in sizes).lstrip(' |') + ' |')
  return '\n'.join(lines), reports


def speed_table(export_report: dict | None, source: str) -> str:
  lines = ['## Speed (per frame)', '']
  lines += ['| where | precision | threads | latency |', '|---|---|--:|--:|',
            f'| Snapdragon 855 GPU (the paper\'s figure) | FP16 | - | {PAPER_PHONE_MS:.0f} ms |']
  if export_report:
    for key, value in sorted(_latencies(export_report).items()):
      precision, threads = key
      lines.append(f'| this CPU, TFLite (measured, {source}) | {precision} | {threads} | {value:.1f} ms |')
  else:
    lines.append('| this CPU | - | - | not measured: pass --export-report DIR/report.json |')
  return '\n'.join(lines)


def _latencies(report: dict) -> dict:
  """{(precision, threads): median ms} from an export report, whatever its nesting."""
  out = {}
  latency = report.get('latency_ms') or report.get('cpu_latency_ms') or report.get('latency') or {}
  for precision, per_threads in latency.items():
    if isinstance(per_threads, dict):
      for threads, value in per_threads.items():
        v = value.get('median') if isinstance(value, dict) else value
        if isinstance(v, (int, float)):
          out[(precision, str(threads))] = float(v)
  return out


def quality_table(evaluation: dict | None, source: str) -> str:
  lines = ['## Quality (self-reenactment)', '']
  keys = ['LPIPS', 'SSIM', 'PSNR', 'CSIM', 'dlib-embedding cosine', 'pose error']
  lines += ['| system | ' + ' | '.join(keys) + ' |', '|---|' + '--:|' * len(keys)]
  lines.append('| the paper, medium model (its figures) | ' + ' | '.join(
      f'{PAPER_MEDIUM[k]}' if k in PAPER_MEDIUM else '-' for k in keys) + ' |')
  if evaluation:
    for system, values in evaluation['mean'].items():
      lines.append(f'| {system} ({source}) | ' + ' | '.join(
          f'{values[k]:.3f}' if isinstance(values.get(k), float) else '-' for k in keys) + ' |')
  else:
    lines.append('| this project | not evaluated: pass --evaluation FILE.json from bilayer-jax evaluate |')
  lines += ['', 'The paper\'s pose error is in its own units; ours is the mean landmark distance over the '
            'inter-ocular distance. The dlib-embedding cosine is the offline identity metric, not ArcFace CSIM.']
  return '\n'.join(lines)


def quality_vs_macs_plot(path, reports: dict, evaluation: dict | None, checkpoint_size: str | None) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
  macs = {s: r.per_frame_rewritten / 1e9 for s, r in reports.items()}
  ax.scatter([macs['paper']], [PAPER_MEDIUM['LPIPS']], marker='*', s=120, label='paper (medium model, its LPIPS)')
  if evaluation and checkpoint_size in macs:
    value = evaluation['mean'].get('model', {}).get('LPIPS')
    if isinstance(value, float):
      ax.scatter([macs[checkpoint_size]], [value], s=60, label=f'this checkpoint ({checkpoint_size})')
  ax.set_xscale('log')
  ax.set_xlabel('GMAC per frame')
  ax.set_ylabel('LPIPS (lower is better)')
  for s, m in macs.items():
    ax.axvline(m, color='0.85', lw=0.8)
    ax.text(m, ax.get_ylim()[1], s, fontsize=7, ha='center', va='bottom')
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def write_tables(out_dir, export_report=None, evaluation=None, checkpoint_size=None, source='') -> list:
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  export = json.loads(pathlib.Path(export_report).read_text()) if export_report else None
  result = json.loads(pathlib.Path(evaluation).read_text()) if evaluation else None
  text, reports = complexity_table()
  files = []
  for name, body in (('complexity.md', text), ('speed.md', speed_table(export, source)),
                     ('quality.md', quality_table(result, source))):
    path = out_dir / name
    path.write_text(body + '\n')
    files.append(path)
  plot = out_dir / 'quality_vs_macs.png'
  quality_vs_macs_plot(plot, reports, result, checkpoint_size)
  files.append(plot)
  return files

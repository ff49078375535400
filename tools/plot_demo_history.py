"""The demo report's loss-curve plot for one run, with another run drawn dashed for comparison.

  python -m tools.plot_demo_history demo_out/history.json \
      --before benchmarks/results/gan_ablations_d_500/demo_2e-4.json --out loss_curves_before_after.png

A history is `demo_out/history.json` (a list of [step, {metric: value}]) or a tools/gan_ablations.py result
(the same list under "history").
"""
from __future__ import annotations

import argparse
import json
import pathlib


def read_history(path: pathlib.Path) -> list:
  data = json.loads(path.read_text())
  history = data['history'] if isinstance(data, dict) else data
  if not history or not isinstance(history[0][1], dict):
    raise SystemExit(f'{path}: not a training history (expected a list of [step, {{metric: value}}])')
  return history


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('history', type=pathlib.Path)
  p.add_argument('--before', type=pathlib.Path, help='a history drawn dashed')
  p.add_argument('--out', type=pathlib.Path, required=True)
  a = p.parse_args(argv)
  if a.out.exists():
    raise SystemExit(f'{a.out} exists; choose another --out')
  from bilayer_jax import demo
  demo.loss_curves(read_history(a.history), a.out, before=read_history(a.before) if a.before else None)
  print(f'wrote {a.out}')


if __name__ == '__main__':
  main()

"""Step metrics kept on the devices over a logging window, fetched once per window, and the run's metrics log.

The loop adds every step's metrics into a window on the devices (an asynchronous jitted add: the host never
waits for a step to finish) and fetches the window once per `log_every` steps: the means, and the first step
of the window whose loss terms were not all finite. A fetch also happens before every checkpoint (only the
finiteness), so that no checkpoint is written after a step that went NaN.

The log: process 0 appends each window's means to WORKDIR/metrics.jsonl, one JSON object per line; a resumed
run appends a marker, and `read_history` drops the windows an interrupted run logged past the checkpoint it
resumed from. Nothing of the history is kept in memory.
"""
from __future__ import annotations

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

METRICS_FILE = 'metrics.jsonl'
_NO_BAD_STEP = np.iinfo(np.int32).max


def _add(window, metrics, step, loss_keys):
  finite = jnp.all(jnp.stack([jnp.isfinite(metrics[k]) for k in loss_keys])) if loss_keys else True
  bad = jnp.where(finite, window['bad_step'], jnp.minimum(window['bad_step'], step))
  sums = jax.tree_util.tree_map(lambda s, m: s + m.astype(jnp.float32), window['sums'], metrics)
  return {'sums': sums, 'count': window['count'] + 1, 'bad_step': bad}


_add_jit = jax.jit(_add, static_argnums=3, donate_argnums=0)


def start(metrics) -> dict:
  """An empty window with the structure of one step's metrics (on the devices the metrics are on)."""
  zeros = jax.tree_util.tree_map(lambda m: jnp.zeros_like(m, jnp.float32), metrics)
  return {'sums': zeros, 'count': jnp.zeros((), jnp.int32), 'bad_step': jnp.full((), _NO_BAD_STEP, jnp.int32)}


def add(window: dict | None, metrics: dict, step: int, loss_keys: tuple) -> dict:
  """The window with one more step's metrics; dispatched, not waited for."""
  if window is None:
    window = start(metrics)
  return _add_jit(window, metrics, jnp.int32(step), tuple(loss_keys))


def fetch_host(tree):
  """The one device-to-host transfer of a window (a function of its own: the tests count the calls)."""
  return jax.device_get(tree)


def bad_step(window: dict) -> int | None:
  """The first step of the window whose losses were not all finite, or None; waits for the window's steps."""
  value = int(fetch_host(window['bad_step']))
  return None if value == _NO_BAD_STEP else value


def fetch(window: dict) -> tuple[dict, int | None]:
  """(means over the window as Python floats, first non-finite step or None)."""
  host = fetch_host(window)
  count = max(int(host['count']), 1)
  means = {k: float(v) / count for k, v in host['sums'].items()}
  value = int(host['bad_step'])
  return means, None if value == _NO_BAD_STEP else value


class MetricsLog:
  """Appends window means to WORKDIR/metrics.jsonl (process 0 only)."""

  def __init__(self, workdir, enabled: bool, resumed_at: int | None):
    self.path = pathlib.Path(workdir) / METRICS_FILE
    self.enabled = enabled
    if enabled and self.path.exists() and self.path.stat().st_size:
      with open(self.path, 'rb+') as f:  # a run killed mid-line: the next record starts on a line of its own
        f.seek(-1, 2)
        if f.read(1) != b'\n':
          f.write(b'\n')
      if resumed_at is not None:
        self._write({'resumed_at': int(resumed_at)})

  def _write(self, record: dict) -> None:
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')

  def append(self, step: int, steps: int, means: dict, seconds_per_step: float | None = None) -> None:
    if self.enabled:
      self._write({'step': int(step), 'steps': int(steps), 'seconds_per_step': seconds_per_step,
                   'metrics': {k: (v if math.isfinite(v) else str(v)) for k, v in means.items()}})


def read_history(workdir) -> list:
  """[(last step of the window, {metric: mean})] of a run's windows, in step order, across its resumes."""
  path = pathlib.Path(workdir) / METRICS_FILE
  history = []
  if not path.exists():
    return history
  for line in path.read_text().splitlines():
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # the last line of a run killed while writing it
      continue
    if 'resumed_at' in record:
      history = [(s, m) for s, m in history if s <= record['resumed_at']]
    else:
      history.append((record['step'], {k: float(v) for k, v in record['metrics'].items()}))
  return history

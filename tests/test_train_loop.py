"""The loop never waits on the host: step N+1 is dispatched before step N's window is fetched, one fetch per
logging window, batches on the devices ahead of their step, NaN found at the fetch before any checkpoint."""
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from bilayer_jax import config_files
from bilayer_jax.train import data as data_lib
from bilayer_jax.train import loop, metrics_window, parallel

ROOT = pathlib.Path(__file__).resolve().parents[1]


def quick_config(**overrides):
  config = config_files.load(str(ROOT / 'experiments' / 'tiny_cpu.py') + ':synthetic,micro')
  config.image_every = 0
  config.training.bn_stats_batches = 0
  config.compilation_cache_dir = 'none'
  for key, value in overrides.items():
    config_files.set_field(config, key, value)
  return config


class RecordingStep:
  """A data-parallel step that does no training and records when it is called; metrics from the batch."""

  def __init__(self, events, nan_at=None):
    def trivial(state, batch):
      x = jnp.mean(batch['target_image'])
      return state, {'total': x, 'D_ADV': x * 0 + 0.5, 'G_L1': jnp.abs(x), 'grad_norm/x': x * 0 + 2}
    self.dp = parallel.DataParallel(trivial, 'jit')
    self.events, self.nan_at, self.calls = events, nan_at, 0

  def __getattr__(self, name):
    return getattr(self.dp, name)

  def step(self, state, batch):
    self.calls += 1
    self.events.append(('dispatch', self.calls))
    state, metrics = self.dp.step(state, batch)
    if self.calls == self.nan_at:
      metrics = {**metrics, 'G_L1': metrics['G_L1'] * jnp.nan}
    return state, metrics


@pytest.fixture
def recorded(monkeypatch):
  events = []
  real_fetch = metrics_window.fetch_host

  def recording_fetch(tree):
    events.append(('fetch', sum(1 for e in events if e[0] == 'dispatch')))
    return real_fetch(tree)

  monkeypatch.setattr(metrics_window, 'fetch_host', recording_fetch)
  return events


def test_each_window_is_fetched_once_after_the_next_step_is_dispatched(tmp_path, monkeypatch, recorded):
  monkeypatch.setattr(loop, 'build_step', lambda config: RecordingStep(recorded))
  config = quick_config(**{'training.num_steps': 12, 'log_every': 4, 'checkpoint_every': 1000})
  summary = loop.train(config, tmp_path / 'run', progress=False)
  assert summary['step'] == 12 and 'history' not in summary  # nothing of the history is kept in memory
  fetches = [n for kind, n in recorded if kind == 'fetch']
  # windows 1-4 and 5-8 are fetched once steps 5 and 9 are dispatched; the last one when the run ends
  assert fetches == [5, 9, 12]
  history = metrics_window.read_history(tmp_path / 'run')
  assert [s for s, _ in history] == [4, 8, 12]
  lines = [json.loads(line) for line in (tmp_path / 'run' / metrics_window.METRICS_FILE).read_text().splitlines()]
  assert [line['steps'] for line in lines] == [4, 4, 4]
  assert all(m['D_ADV'] == pytest.approx(0.5) and m['grad_norm/x'] == pytest.approx(2.0) for _, m in history)


def test_window_means_equal_the_mean_of_each_steps_metrics(tmp_path, monkeypatch):
  seen = []

  class Keeping(RecordingStep):
    def step(self, state, batch):
      state, metrics = super().step(state, batch)
      seen.append(float(metrics['total']))
      return state, metrics

  monkeypatch.setattr(loop, 'build_step', lambda config: Keeping([]))
  loop.train(quick_config(**{'training.num_steps': 6, 'log_every': 3}), tmp_path / 'run', progress=False)
  history = metrics_window.read_history(tmp_path / 'run')
  assert [m['total'] for _, m in history] == pytest.approx([np.mean(seen[:3]), np.mean(seen[3:])], rel=1e-6)


def test_a_nan_is_found_at_the_fetch_before_the_checkpoint_that_would_hold_it(tmp_path, monkeypatch, recorded):
  monkeypatch.setattr(loop, 'build_step', lambda config: RecordingStep(recorded, nan_at=6))
  config = quick_config(**{'training.num_steps': 12, 'log_every': 4, 'checkpoint_every': 4,
                           'async_checkpoints': False})
  with pytest.raises(loop.TrainingDiverged, match=r'loss G_L1 is not finite at step 6 \(found at the fetch of the '
                                                   r'logging window of steps 5-8\).*step 4\) .* is intact'):
    loop.train(config, tmp_path / 'run', progress=False)
  assert sorted(p.name for p in (tmp_path / 'run' / 'checkpoints').iterdir() if p.name.isdigit()) == ['4']


def test_a_resumed_run_drops_the_windows_logged_past_its_checkpoint(tmp_path):
  log = metrics_window.MetricsLog(tmp_path, True, None)
  for step in (2, 4, 6):
    log.append(step, 2, {'total': float(step)})
  with open(tmp_path / metrics_window.METRICS_FILE, 'a') as f:
    f.write('{"step": 8, "ste')  # killed while writing
  log = metrics_window.MetricsLog(tmp_path, True, resumed_at=4)
  log.append(6, 2, {'total': 60.0})
  assert metrics_window.read_history(tmp_path) == [(2, {'total': 2.0}), (4, {'total': 4.0}), (6, {'total': 60.0})]


def test_batches_are_put_on_the_devices_ahead_of_their_step():
  puts = []

  def put(batch):
    puts.append(batch['i'])
    return {'i': batch['i']}

  stream = data_lib.prefetch_to_devices(({'i': i} for i in range(5)), put, depth=2)
  local, device = next(stream)
  assert local['i'] == device['i'] == 0 and puts == [0, 1, 2]  # two more already in flight
  assert [d['i'] for _, d in stream] == [1, 2, 3, 4] and puts == [0, 1, 2, 3, 4]
  assert [d['i'] for _, d in data_lib.prefetch_to_devices(({'i': i} for i in range(3)), put, 0)] == [0, 1, 2]


def test_profile_steps_are_checked_and_traced(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match='START,COUNT'):
    loop.ProfileWindow('5', 0)
  with pytest.raises(ValueError, match='at least 1'):
    loop.ProfileWindow('0,3', 0)
  assert loop.ProfileWindow('2,3', 10).first is None  # a run resumed past the window traces nothing
  monkeypatch.setattr(loop, 'build_step', lambda config: RecordingStep([]))
  loop.train(quick_config(**{'training.num_steps': 5, 'log_every': 5, 'profile_steps': '2,2'}), tmp_path / 'run',
             progress=False)
  traces = list((tmp_path / 'run' / 'profile').rglob('*.xplane.pb'))
  assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_the_loop_runs_without_tensorflow(tmp_path, monkeypatch, capsys):
  import sys
  monkeypatch.setitem(sys.modules, 'tensorflow', None)  # `import tensorflow` raises ImportError
  monkeypatch.setattr(loop, 'build_step', lambda config: RecordingStep([]))
  summary = loop.train(quick_config(**{'training.num_steps': 4, 'log_every': 2}), tmp_path / 'run', progress=False)
  assert summary['step'] == 4 and len(metrics_window.read_history(tmp_path / 'run')) == 2
  assert 'TensorFlow is not installed' in capsys.readouterr().out
  assert not (tmp_path / 'run' / 'tensorboard').exists()

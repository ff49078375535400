"""tools/plot_demo_history.py: the demo's loss curves for a run against an earlier one."""
import json

import pytest

from tools import plot_demo_history


def _history(steps, scale):
  return [[s, {'G_L1': scale / s, 'G_PER': 2 * scale / s, 'D_ADV': 1.0, 'G_ADV': 0.5, 'D_real_score': 0.1,
               'D_fake_score': -0.1, 'update_ratio/inference_generator': 1e-3}] for s in steps]


def test_plots_a_run_against_an_earlier_one(tmp_path):
  (tmp_path / 'history.json').write_text(json.dumps(_history(range(1, 60, 5), 3.0)))
  (tmp_path / 'before.json').write_text(json.dumps({'variant': 'x', 'history': _history(range(1, 40, 3), 5.0)}))
  out = tmp_path / 'curves.png'
  plot_demo_history.main([str(tmp_path / 'history.json'), '--before', str(tmp_path / 'before.json'), '--out', str(out)])
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_never_overwrites_and_refuses_what_is_not_a_history(tmp_path):
  (tmp_path / 'history.json').write_text(json.dumps(_history([1, 2], 1.0)))
  out = tmp_path / 'curves.png'
  out.write_bytes(b'mine')
  with pytest.raises(SystemExit, match='exists'):
    plot_demo_history.main([str(tmp_path / 'history.json'), '--out', str(out)])
  assert out.read_bytes() == b'mine'
  (tmp_path / 'other.json').write_text(json.dumps({'history': [[1, 2.0]]}))
  with pytest.raises(SystemExit, match='not a training history'):
    plot_demo_history.main([str(tmp_path / 'other.json'), '--out', str(tmp_path / 'new.png')])

"""One trainer per workdir: a second is refused at once and named, a killed holder's lock is taken over."""
import subprocess
import sys

import pytest

from bilayer_jax.train.workdir_lock import LOCK_FILE, WorkdirBusy, workdir_lock

HOLD = '''import sys, time
from bilayer_jax.train.workdir_lock import workdir_lock
with workdir_lock(sys.argv[1]):
  print('holding', flush=True)
  time.sleep(120)
'''


def test_second_holder_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path, capsys):
  holder = subprocess.Popen([sys.executable, '-c', HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'holding'
    with pytest.raises(WorkdirBusy, match=f'in use by process {holder.pid} on '):
      with workdir_lock(tmp_path):
        pass
  finally:
    holder.kill()
    holder.wait()
  with workdir_lock(tmp_path):
    assert f'taking over the lock of process {holder.pid}' in capsys.readouterr().out
  assert (tmp_path / LOCK_FILE).read_text() == ''  # released on exit
  with workdir_lock(tmp_path):  # a clean release leaves nothing to take over
    assert 'taking over' not in capsys.readouterr().out


def test_the_lock_is_released_when_the_body_raises(tmp_path):
  with pytest.raises(KeyError):
    with workdir_lock(tmp_path):
      raise KeyError('x')
  with workdir_lock(tmp_path):
    pass

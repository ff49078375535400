"""Process setup (runtime.py), the one-device step form and the training form of 2x2 pooling."""
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from bilayer_jax import runtime
from bilayer_jax.nn import resample


def test_pooling_forms_are_the_same_math():
  x = np.random.default_rng(0).normal(size=(2, 8, 6, 3)).astype(np.float32)
  a = resample.avg_pool_2x(jnp.asarray(x), 'reduce_window')
  b = resample.avg_pool_2x(jnp.asarray(x), 'reshape')
  np.testing.assert_allclose(a, x.reshape(2, 4, 2, 3, 2, 3).mean((2, 4)), atol=1e-6)
  np.testing.assert_allclose(a, b, atol=1e-6)
  with pytest.raises(ValueError, match='unknown downsample mode'):
    resample.avg_pool_2x(jnp.asarray(x), 'max')


def test_xla_flag_is_added_once_and_never_over_a_users_setting(monkeypatch):
  from importlib.metadata import version
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  changed = runtime.configure_xla_cpu()
  assert changed == version('jaxlib').startswith(runtime.YNN_FLAG_JAXLIB)
  if changed:
    assert os.environ['XLA_FLAGS'] == (f'--xla_force_host_platform_device_count=2 '
                                       f'{runtime.YNN_FLAG}={runtime.YNN_TYPES}')
    assert not runtime.configure_xla_cpu()
  monkeypatch.setenv('XLA_FLAGS', f'{runtime.YNN_FLAG}=')
  assert not runtime.configure_xla_cpu()


def test_preload_env_keeps_other_preloads(monkeypatch):
  monkeypatch.setattr(runtime, 'tcmalloc_library', lambda: '/opt/libtcmalloc_minimal.so.4')
  env = runtime.preload_env({'LD_PRELOAD': '/opt/other.so', 'X': '1'})
  assert env['LD_PRELOAD'] == '/opt/libtcmalloc_minimal.so.4:/opt/other.so'
  assert env[runtime.ENV] == 'tcmalloc' and env['X'] == '1'
  monkeypatch.setattr(runtime, 'tcmalloc_library', lambda: None)
  assert runtime.preload_env({}) is None


def test_the_command_runs_on_tcmalloc_when_installed_and_keeps_its_exit_code(tmp_path):
  script = tmp_path / 'probe.py'
  script.write_text('import sys\nfrom bilayer_jax import runtime\nruntime.reexec_with_tcmalloc()\n'
                    'print(runtime.allocator_in_use())\nsys.exit(7)\n')
  root = str(pathlib.Path(__file__).resolve().parents[1])
  env = {k: v for k, v in os.environ.items() if k not in (runtime.ENV, 'LD_PRELOAD')}
  env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
  assert out.returncode == 7
  expected = 'tcmalloc' if runtime.tcmalloc_library() else 'system'
  assert out.stdout.strip() == expected
  env[runtime.ENV] = 'system'
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
  assert out.stdout.strip() == 'system'


_FAULT_PROBE = '''
import ctypes, resource, sys, threading
from bilayer_jax import runtime
print(runtime.setup_allocator())
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def touch():  # on a new thread, as XLA's runs: 256 MB allocated, written, freed
  block = libc.malloc(1 << 28)
  ctypes.memset(block, 1, 1 << 28)
  libc.free(block)

touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
thread = threading.Thread(target=touch)
thread.start()
thread.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings are Linux-only')
def test_glibc_keeps_freed_memory_instead_of_faulting_it_in_again(tmp_path):
  script = tmp_path / 'faults.py'
  script.write_text(_FAULT_PROBE)
  root = str(pathlib.Path(__file__).resolve().parents[1])
  env = {k: v for k, v in os.environ.items() if k != 'LD_PRELOAD'}
  env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
  faults = {}
  for setting in ('system', runtime.GLIBC_KEPT):
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=dict(env, **{runtime.ENV: setting}))
    assert out.returncode == 0, out.stderr
    in_use, count = out.stdout.split()
    faults[in_use] = int(count)
  if runtime.GLIBC_KEPT not in faults:
    pytest.skip('not glibc')
  assert faults['system'] > 50_000  # 256 MB in 4 KB pages, faulted again
  assert faults[runtime.GLIBC_KEPT] < 1_000


@pytest.mark.parametrize('setting, cores, expected', [
    (None, 1, runtime.GLIBC_KEPT), (None, 2, 'system'), ('glibc-kept', 2, runtime.GLIBC_KEPT),
    ('system', 1, 'system')])
def test_without_tcmalloc_glibc_keeps_its_memory_on_one_core_only(monkeypatch, setting, cores, expected):
  kept = []
  monkeypatch.setattr(runtime, 'reexec_with_tcmalloc', lambda: None)  # as when tcmalloc is not installed
  monkeypatch.setattr(runtime, 'allocator_in_use', lambda: 'system')
  monkeypatch.setattr(runtime, 'usable_cores', lambda: cores)
  monkeypatch.setattr(runtime, 'keep_glibc_memory', lambda: kept.append(1) or True)
  if setting is None:
    monkeypatch.delenv(runtime.ENV, raising=False)
  else:
    monkeypatch.setenv(runtime.ENV, setting)
  assert runtime.setup_allocator() == expected
  assert bool(kept) == (expected == runtime.GLIBC_KEPT)

"""Training: the GAN update, data parallelism on simulated devices and hosts, preemption and divergence.

The parallel and process tests run `bilayer-jax train` / tests/parallel_driver.py in subprocesses, since the
number of simulated CPU devices is fixed when JAX starts.
"""
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilayer_jax import model as model_lib
from bilayer_jax.losses import gan
from bilayer_jax.train import data as data_lib
from bilayer_jax.train.checkpoints import Checkpointer
from bilayer_jax.train.defaults import training_config
from bilayer_jax.train.step import init_state, make_train_step

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENT = str(ROOT / 'experiments' / 'tiny_cpu.py') + ':synthetic,micro'
QUICK = ['--config.image_every=0', '--config.training.bn_stats_batches=0', '--config.log_every=1']


def env(devices=1, **extra):
  e = dict(os.environ)
  e['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  e['PYTHONPATH'] = str(ROOT) + os.pathsep + e.get('PYTHONPATH', '')
  e.update(extra)
  return e


def train_cmd(workdir, *overrides):
  return [sys.executable, '-m', 'bilayer_jax.cli', 'train', '--config', EXPERIMENT, '--workdir', str(workdir),
          *QUICK, *overrides]


def restore(workdir, step, optimizer='adam'):
  config = training_config('micro')
  config.training.perceptual = []
  config.training.optimizer = optimizer
  template = init_state(config, model_lib.init_variables(config.model, 0))
  state, meta = Checkpointer(pathlib.Path(workdir) / 'checkpoints', 1, 10).restore(step, template)
  return state, meta


def max_difference(a, b):
  diffs = jax.tree_util.tree_map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
  return max(jax.tree_util.tree_leaves(diffs))


def test_relativistic_hinge_values():
  r = jnp.array([1.0, 3.0])
  f = jnp.array([0.0, -2.0])
  # mean f = -1, mean r = 2
  d = (np.mean(np.maximum(0, 1 - (np.array([1, 3]) + 1))) + np.mean(np.maximum(0, 1 + (np.array([0, -2]) - 2))))
  assert float(gan.discriminator_hinge(r, f)) == pytest.approx(d)
  g = (np.mean(np.maximum(0, 1 - (np.array([0, -2]) - 2))) + np.mean(np.maximum(0, 1 + (np.array([1, 3]) + 1))))
  assert float(gan.generator_hinge(f, r)) == pytest.approx(g)
  assert float(gan.feature_matching([jnp.ones(3)], [jnp.zeros(3)])) == 1.0


def test_generator_terms_never_update_the_discriminator():
  """Feature matching alone: the generators learn, D's parameters stay where they were (docs/model.md B1)."""
  config = training_config('micro')
  config.training.perceptual = []
  config.training.loss_weights.update(dict(adversarial=0.0, pixelwise=0.0, segmentation=0.0, feature_matching=10.0))
  variables = model_lib.init_variables(config.model, 0)
  state = init_state(config, variables)
  step = jax.jit(make_train_step(config, model_lib.build_networks(config.model), None, None))
  batch = next(data_lib.synthetic_batches(0, 2, config.model.image_size, 0, 0, 1))
  new, metrics = step(state, batch)
  assert float(metrics['G_FM']) > 0 and float(metrics['D_ADV']) == 0
  d_before, d_after = variables['discriminator']['params'], new.variables['discriminator']['params']
  assert max_difference(d_before, d_after) == 0.0
  assert max_difference(variables['inference_generator']['params'], new.variables['inference_generator']['params']) > 0
  # D's BatchNorm statistics and spectral vectors still move (it ran in training mode)
  assert max_difference(variables['discriminator']['spectral'], new.variables['discriminator']['spectral']) > 0


def test_step_reports_gan_health():
  """Mean D scores, and per optimizer group a gradient norm and an update/parameter ratio (Adam's first step
  moves every parameter by about lr, so the ratio is about lr * sqrt(count) / |params|)."""
  config = training_config('micro')
  config.training.perceptual = []
  variables = model_lib.init_variables(config.model, 0)
  state = init_state(config, variables)
  _, metrics = jax.jit(make_train_step(config, model_lib.build_networks(config.model), None, None))(
      state, next(data_lib.synthetic_batches(0, 2, config.model.image_size, 0, 0, 1)))
  for group in ('identity_embedder', 'texture_generator', 'keypoints_embedder', 'inference_generator',
                'discriminator'):
    assert float(metrics[f'grad_norm/{group}']) > 0
    ratio = float(metrics[f'update_ratio/{group}'])
    assert 0 < ratio < 1e-2
  assert np.isfinite(float(metrics['D_real_score'])) and np.isfinite(float(metrics['D_fake_score']))
  assert 'G_PER' not in metrics and 'total' in metrics


def test_pair_augmentation_moves_each_real_and_its_fake_alike():
  from bilayer_jax.losses import discriminator_regularizers as d_regs

  image = jnp.arange(2 * 5 * 6 * 1, dtype=jnp.float32).reshape(2, 5, 6, 1) + 1
  moved = d_regs.translate(image, jnp.array([[1, -2], [0, 0]]))
  np.testing.assert_array_equal(moved[0, 1:, :4], image[0, :4, 2:])
  assert float(jnp.abs(moved[0, 0]).max()) == 0 and float(jnp.abs(moved[0, :, 4:]).max()) == 0
  np.testing.assert_array_equal(moved[1], image[1])
  reals = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  out = d_regs.augment_pairs(jax.random.PRNGKey(1), jnp.concatenate([reals, reals + 5.0], 0), 0.25)
  np.testing.assert_allclose(out[4:] - out[:4], jnp.where(out[:4] == 0, 0.0, 5.0) * (out[4:] != 0), atol=1e-6)
  assert float(jnp.abs(out[:4] - reals).max()) > 0  # something moved
  assert float(d_regs.instance_noise_std(jnp.array(50), 0.2, 100)) == pytest.approx(0.1)
  assert float(d_regs.instance_noise_std(jnp.array(500), 0.2, 100)) == 0.0
  assert float(d_regs.r1_penalty(jnp.ones((2, 3, 3, 2)))) == 18.0


def test_discriminator_remedies_in_the_step():
  """R1 reports D_R1 > 0; augmentation and noise change D's scores; a D learning-rate scale of 0 freezes D's
  parameters while the generators still learn."""
  def run(**settings):
    config = training_config('micro')
    config.training.perceptual = []
    config.training.discriminator.update(settings)
    variables = model_lib.init_variables(config.model, 0)
    state = init_state(config, variables)
    new, metrics = jax.jit(make_train_step(config, model_lib.build_networks(config.model), None, None))(
        state, next(data_lib.synthetic_batches(0, 2, config.model.image_size, 0, 0, 1)))
    return variables, new, metrics

  _, _, plain = run()
  assert 'D_R1' not in plain
  _, _, r1 = run(r1_weight=1.0)
  assert float(r1['D_R1']) > 0 and np.isfinite(float(r1['total']))
  assert float(r1['D_ADV']) == pytest.approx(float(plain['D_ADV']), rel=1e-5)
  _, _, augmented = run(augment_shift=0.25, instance_noise=0.3)
  assert float(augmented['D_real_score']) != pytest.approx(float(plain['D_real_score']), rel=1e-4)
  variables, new, _ = run(learning_rate_scale=0.0)
  assert max_difference(variables['discriminator']['params'], new.variables['discriminator']['params']) == 0.0
  assert max_difference(variables['inference_generator']['params'], new.variables['inference_generator']['params']) > 0


def test_discriminator_watch_warns_once_after_patience():
  from bilayer_jax.train.loop import DiscriminatorWatch, scalar_tag

  watch = DiscriminatorWatch(0.01, 3)
  assert [watch.update(s, v) for s, v in ((10, 0.001), (20, 0.002), (30, 0.5), (40, 0.0))] == [None] * 4
  warning = [watch.update(s, 0.0) for s in (50, 60)]
  assert warning[0] is None and 'step 60' in warning[1]
  assert watch.update(70, 0.0) is None  # once
  assert DiscriminatorWatch(0.01, 0).update(1, 0.0) is None
  assert scalar_tag('G_L1') == 'loss/G_L1' and scalar_tag('D_ADV') == 'loss/D_ADV'
  assert scalar_tag('D_real_score') == 'gan/D_real_score' and scalar_tag('grad_norm/discriminator') == 'grad_norm/discriminator'


def test_parallel_forms_and_synchronized_batchnorm(tmp_path):
  """shard_map on 8 devices == pmap on 8 devices == one device with the whole batch: every parameter, batch
  statistic and spectral vector after one step (1e-6), the losses of two steps (1e-5 relative)."""
  out = tmp_path / 'params.npz'
  subprocess.run([sys.executable, str(ROOT / 'tests' / 'parallel_driver.py'), str(out), 'sgd'],
                 env=env(8), check=True, timeout=900, capture_output=True)
  d = np.load(out)
  keys = [k.split('/', 1)[1] for k in d.files if k.startswith('shard_map8/') and not k.endswith('/losses')]
  assert len(keys) > 100
  for other in ('pmap8', 'shard_map1'):
    worst = max(keys, key=lambda k: np.abs(d['shard_map8/' + k] - d[f'{other}/' + k]).max())
    diff = np.abs(d['shard_map8/' + worst] - d[f'{other}/' + worst]).max()
    assert diff < 1e-6, (other, worst, diff)
    np.testing.assert_allclose(d['shard_map8/losses'], d[f'{other}/losses'], rtol=1e-5)


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
  """2 processes x 4 CPU devices on localhost == 1 process x 8 devices."""
  common = ['--config.training.num_steps=2', '--config.training.batch_size=8', '--config.checkpoint_every=2',
            '--config.training.optimizer=sgd', '--config.training.learning_rate=0.01']
  port = _free_port()
  procs = [subprocess.Popen(train_cmd(tmp_path / 'multi', *common), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            env=env(4, BILAYER_COORDINATOR=f'localhost:{port}', BILAYER_NUM_PROCESSES='2',
                                    BILAYER_PROCESS_ID=str(i)))
           for i in range(2)]
  single = subprocess.run(train_cmd(tmp_path / 'single', *common), cwd=tmp_path, env=env(8), capture_output=True,
                          text=True, timeout=900)
  outputs = [p.communicate(timeout=900)[0].decode() for p in procs]
  assert all(p.returncode == 0 for p in procs), outputs
  assert single.returncode == 0, single.stderr
  a, _ = restore(tmp_path / 'multi', 2, 'sgd')
  b, _ = restore(tmp_path / 'single', 2, 'sgd')
  assert max_difference(a.variables, b.variables) < 1e-5
  # only process 0 writes logs and images
  assert len(list((tmp_path / 'multi' / 'tensorboard').glob('events*'))) == 1


def test_sigkill_mid_run_then_restart_equals_an_uninterrupted_run(tmp_path):
  common = ['--config.training.num_steps=6', '--config.checkpoint_every=2']
  full = subprocess.run(train_cmd(tmp_path / 'full', *common), cwd=tmp_path, env=env(), capture_output=True,
                        text=True, timeout=900)
  assert full.returncode == 0, full.stderr
  run = tmp_path / 'killed'
  proc = subprocess.Popen(train_cmd(run, *common), cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while not (run / 'checkpoints' / '2').is_dir() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  resumed = subprocess.run(train_cmd(run, *common), cwd=tmp_path, env=env(), capture_output=True, text=True,
                           timeout=900)
  assert resumed.returncode == 0, resumed.stderr
  assert 'resumed from step' in resumed.stdout
  assert f'taking over the lock of process {proc.pid}' in resumed.stdout  # the killed run's lock is stale
  a, meta = restore(tmp_path / 'full', 6)
  b, _ = restore(run, 6)
  assert meta['input_position'] == 6
  assert int(b.step) == 6
  assert max_difference(a.variables, b.variables) < 1e-6
  assert max_difference(a.opt_states, b.opt_states) < 1e-6


def test_sigterm_saves_and_exits_with_its_own_code_and_a_second_trainer_is_refused(tmp_path):
  run = tmp_path / 'run'
  proc = subprocess.Popen(train_cmd(run, '--config.training.num_steps=1000', '--config.checkpoint_every=2'),
                          cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 600
  while not (run / 'checkpoints' / '2').is_dir() and time.time() < deadline:
    time.sleep(0.05)
  second = subprocess.run(train_cmd(run, '--config.training.num_steps=1000'), cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=300)
  assert second.returncode == 2, second.stderr
  assert f'is in use by process {proc.pid}' in second.stderr and 'Traceback' not in second.stderr
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 75, err
  assert 'SIGTERM: saved step' in out and 'stopped by SIGTERM' in err
  saved = int(out.split('SIGTERM: saved step')[1].split()[0])
  assert (run / 'checkpoints' / str(saved)).is_dir() and saved >= 2
  assert (run / 'train.lock').read_text() == ''  # released


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  run = tmp_path / 'run'
  result = subprocess.run(train_cmd(run, '--config.training.num_steps=50', '--config.checkpoint_every=1',
                                    '--config.training.learning_rate=1e30'),
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900)
  assert result.returncode == 3, result.stderr
  assert 'is not finite at step' in result.stderr and 'is intact' in result.stderr
  steps = sorted(int(p.name) for p in (run / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps, 'no checkpoint kept'
  bad_step = int(result.stderr.split('is not finite at step ')[1].split()[0])
  assert max(steps) < bad_step
  state, _ = restore(run, max(steps))
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(state.variables))

"""Runs training steps in a subprocess with simulated CPU devices (tests/test_train.py starts it).

  python tests/parallel_driver.py OUT.npz [sgd]   (XLA_FLAGS=--xla_force_host_platform_device_count=8)

Runs 2 steps of the micro model on one global batch of 8 synthetic samples with shard_map over 8 devices,
pmap over 8 devices and shard_map over 1 device, and saves each form's variables after the first step and its
losses of both steps. Variables after the second step are not compared: one step's float rounding (the
three forms reduce in different orders) grows through the GAN's second step to 1e-3 of some updates.
"""
import sys

import jax
import numpy as np

from bilayer_jax import model as model_lib
from bilayer_jax.train import data, parallel
from bilayer_jax.train.defaults import training_config
from bilayer_jax.train.step import init_state, make_train_step


def run(kind, devices, config, variables):
  model = config.model.copy_and_resolve_references()
  model.axis_name = parallel.AXIS
  run_config = config.copy_and_resolve_references()
  run_config.model = model
  step = make_train_step(run_config, model_lib.build_networks(model), None, parallel.AXIS)
  dp = parallel.DataParallel(step, kind, devices=devices)
  state = dp.put_state(init_state(config, variables, 0))
  batches = data.synthetic_batches(0, 8, model.image_size, 0, 0, 1)
  losses = []
  for i in range(2):
    state, metrics = dp.step(state, dp.put_batch(next(batches)))
    losses.append(float(metrics['total']))
    if i == 0:
      host = dp.get_state(state)
  flat = {}
  for net, v in host.variables.items():
    for coll in ('params', 'batch_stats', 'spectral'):
      for path, leaf in jax.tree_util.tree_flatten_with_path(v.get(coll, {}))[0]:
        flat[f'{kind}{len(devices)}/{net}/{coll}/' + '/'.join(str(p.key) for p in path)] = np.asarray(leaf)
  flat[f'{kind}{len(devices)}/losses'] = np.asarray(losses)
  return flat


def main(out):
  config = training_config('micro')
  config.training.perceptual = []
  if len(sys.argv) > 2 and sys.argv[2] == 'sgd':
    config.training.optimizer = 'sgd'
    config.training.learning_rate = 0.01  # parameter differences = 0.01 x gradient differences
  variables = model_lib.init_variables(config.model, 0)
  devices = jax.devices()
  assert len(devices) == 8, devices
  result = {}
  result.update(run('shard_map', devices, config, variables))
  result.update(run('pmap', devices, config, variables))
  result.update(run('shard_map', devices[:1], config, variables))
  np.savez(out, **result)


if __name__ == '__main__':
  main(sys.argv[1])

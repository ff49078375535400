"""A tiny model that trains on a laptop CPU (64x64, batch 4).

  bilayer-jax train --config experiments/tiny_cpu.py --workdir runs/tiny --config.data.dir=DATA
  bilayer-jax train --config experiments/tiny_cpu.py:synthetic --workdir runs/tiny_synthetic

`:synthetic` needs no data at all (moving coloured blobs; for smoke tests of the machinery).
"""
from bilayer_jax.train.defaults import training_config


def get_config(arg: str = ''):
  config = training_config('micro' if 'micro' in arg else 'tiny', stage='base')
  config.training.batch_size = 4
  config.training.num_steps = 2000
  config.training.bn_stats_batches = 20
  config.log_every = 10
  config.image_every = 200
  config.checkpoint_every = 200
  if 'synthetic' in arg:
    config.data.source = 'synthetic'
    config.training.perceptual = []
  return config

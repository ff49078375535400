"""A tiny model that trains on a laptop CPU (64x64, batch 4).

  bilayer-jax train --config tiny_cpu --workdir runs/tiny --config.data.dir=DATA
  bilayer-jax train --config tiny_cpu:synthetic --workdir runs/tiny_synthetic

Options (`tiny_cpu:A,B`): `synthetic` needs no data at all (moving coloured blobs; for smoke tests of the
machinery; no perceptual term); `micro` trains the 32x32 micro size instead of tiny.
"""
from bilayer_jax.config_files import parse_options
from bilayer_jax.train.defaults import training_config


def get_config(arg: str = ''):
  options = parse_options(arg, {'data': ('records', 'synthetic'), 'size': ('tiny', 'micro')})
  config = training_config(options['size'], stage='base')
  config.training.batch_size = 4
  config.training.num_steps = 2000
  config.training.bn_stats_batches = 20
  config.log_every = 10
  config.image_every = 200
  config.checkpoint_every = 200
  if options['data'] == 'synthetic':
    config.data.source = 'synthetic'
    config.training.perceptual = []
  return config

"""The quickstart demo's training run: the tiny model on the real carphone clip, bounded time on a CPU.

  make demo            (or: bilayer-jax demo --out demo_out)

`bilayer-jax demo` sets data.dir to the clip it preprocessed (frames 0-99) and trains with this config.
"""
from bilayer_jax.train.defaults import training_config


def get_config(arg: str = ''):
  config = training_config('tiny', stage='base')
  config.training.batch_size = 8
  config.training.num_steps = 3000  # the demo stops at its time limit first on 2 cores
  config.training.bn_stats_batches = 20
  config.data.source = 'records'
  config.log_every = 25
  config.image_every = 250
  config.checkpoint_every = 250
  config.keep_checkpoints = 2
  return config

"""The quickstart demo's training run: the tiny model on the real carphone clip, bounded time on a CPU.

  make demo            (or: bilayer-jax demo --out demo_out)

`bilayer-jax demo` sets data.dir to the clip it preprocessed (frames 0-99) and trains with this config.

Departures from the authors' recipe, for this data only:
  training.apply_masks = False   The demo preprocesses without a segmenter (the clip is 176x144 and the
      selfie model adds little at 64 px), so every ground-truth mask is all ones. With masks applied, the
      losses and D see the image through the *predicted* mask, which starts near 0.5 and grows to 1 as the
      BCE term learns the all-ones target: the masked L1 then rises from 3.4 to 8 in the first 20 steps
      while the unmasked error falls (tools/gan_ablations.py, variants demo / no_gan / no_masks: the rise
      is the same with D switched off). Unmasked losses measure the whole frame from step 1.
"""
from bilayer_jax.config_files import parse_options
from bilayer_jax.train.defaults import training_config


def get_config(arg: str = ''):
  parse_options(arg, {})  # takes no options
  config = training_config('tiny', stage='base')
  config.training.batch_size = 8
  config.training.apply_masks = False
  config.training.num_steps = 3000  # the demo stops at its time limit first on 2 cores
  config.training.bn_stats_batches = 20
  config.data.source = 'records'
  config.log_every = 25
  config.image_every = 250
  config.checkpoint_every = 250
  config.keep_checkpoints = 2
  return config

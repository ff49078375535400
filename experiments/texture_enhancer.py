"""Stage 2: the texture enhancer trained with the base model frozen and in eval mode (docs/model.md §6.2, as the
authors meant it: the enhancer's output feeds D and the perceptual losses).

  bilayer-jax train --config texture_enhancer --workdir runs/enhancer \
      --config.training.init_checkpoint=runs/base/inference/step_1000000 \
      --config.data.dir=/data/voxceleb2_records

Options (`texture_enhancer:OPTION`): the model size, one of paper (default), small, tiny, micro.
"""
from bilayer_jax.config import SIZES
from bilayer_jax.config_files import parse_options
from bilayer_jax.train.defaults import training_config


def get_config(arg: str = ''):
  size = parse_options(arg, {'size': SIZES})['size']
  config = training_config(size, stage='enhancer')
  config.training.batch_size = 40
  config.training.num_steps = 500_000
  return config

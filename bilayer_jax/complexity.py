"""Parameter and MAC counts of every network, from shapes alone (nothing is compiled or allocated).

MACs are counted like the reference's hooks (docs/model.md §9): every conv, linear and adaptive 1x1 conv, for one
sample at the configured image size; a conv costs H_out * W_out * C_in * C_out * k^2, biases are free.
The counting runs the real modules under `jax.eval_shape` with a Flax method interceptor, so the numbers
follow the code (including the skip-before-upsample rewrite) rather than a separate formula.
`traced_macs` counts a plain function instead (the export's folded graphs, which are no Flax modules).
"""
from __future__ import annotations

import collections
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilayer_jax import model as model_lib
from bilayer_jax.avatar.identity_embedder import embedder_inputs
from bilayer_jax.avatar.projectors import generator_adaptive_params
from bilayer_jax.nn.layers import AdaptiveConv1x1, Conv, Dense


def parameter_counts(config) -> dict[str, int]:
  shapes = model_lib.variable_shapes(config)
  return {name: sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(v['params']))
          for name, v in shapes.items()}


def _layer_macs(module, args, out) -> int:
  if isinstance(module, Conv):
    x = args[0]
    return math.prod(out.shape[:-1]) * x.shape[-1] * module.features * module.kernel_size ** 2
  if isinstance(module, Dense):
    x = args[0]
    return math.prod(out.shape[:-1]) * x.shape[-1] * module.features
  if isinstance(module, AdaptiveConv1x1):
    x, kernel = args[0], args[1]
    return math.prod(x.shape[:-1]) * kernel.shape[-2] * kernel.shape[-1]
  return 0


def mac_counts(config) -> dict[str, int]:
  """MACs of one pass of each network for one sample (the enhancer: one of its unrolled passes)."""
  counts: dict[str, int] = collections.Counter()
  current = ['']

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__':
      counts[current[0]] += _layer_macs(context.module, args, out)
    return out

  nets = model_lib.build_networks(config)
  shapes = model_lib.variable_shapes(config)
  s = config.image_size

  def run(variables):
    x = model_lib.example_inputs(config)
    with nn.intercept_methods(interceptor):
      current[0] = 'identity_embedder'
      embeddings = nets['identity_embedder'].apply(variables['identity_embedder'], embedder_inputs(
          x['image'], None if config.emb_no_stickman else x['stickman'], x['mask']))
      current[0] = 'texture_projector'
      tex = nets['texture_projector'].apply(variables['texture_projector'], embeddings)
      current[0] = 'inference_projector'
      inf = nets['inference_projector'].apply(variables['inference_projector'], embeddings)
      current[0] = 'texture_generator'
      nets['texture_generator'].apply(variables['texture_generator'],
                                      generator_adaptive_params(tex, config.tex_norm_layer_type))
      current[0] = 'keypoints_embedder'
      pose = nets['keypoints_embedder'].apply(variables['keypoints_embedder'], x['poses'])
      current[0] = 'inference_generator'
      nets['inference_generator'].apply(variables['inference_generator'], pose,
                                        generator_adaptive_params(inf, config.inf_norm_layer_type))
      current[0] = 'texture_enhancer'
      nets['texture_enhancer'].apply(variables['texture_enhancer'], jnp.zeros((1, s, s, 6)))
      current[0] = 'discriminator'
      nets['discriminator'].apply(variables['discriminator'],
                                  jnp.zeros((1, s, s, 3 if config.dis_no_stickman else 6)))
    return 0

  jax.eval_shape(run, shapes)
  return dict(counts)


def _jaxpr_macs(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      rhs = eqn.params['dimension_numbers'].rhs_spec  # (out, in, spatial...) axes of the kernel
      kernel = eqn.invars[1].aval.shape
      taps = math.prod(kernel[i] for i in rhs[1:])  # input channels per group x window
      total += math.prod(eqn.outvars[0].aval.shape) * taps
    elif eqn.primitive.name == 'dot_general':
      (contracting, _), _ = eqn.params['dimension_numbers']
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(eqn.invars[0].aval.shape[i] for i in contracting)
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (tuple, list)) else (param,)):
        inner = getattr(sub, 'jaxpr', None)
        if inner is not None:
          total += _jaxpr_macs(getattr(inner, 'jaxpr', inner))
  return total


def traced_macs(fn, *args) -> int:
  """MACs of the convs and matmuls that fn(*args) traces to (shapes only: args may be ShapeDtypeStructs)."""
  return _jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


@dataclasses.dataclass
class Report:
  parameters: dict[str, int]
  macs: dict[str, int]               # reference layout
  inference_generator_rewritten: int  # skip convs before the upsampling
  sampling_macs: int

  @property
  def per_frame(self) -> int:
    return self.macs['keypoints_embedder'] + self.macs['inference_generator'] + self.sampling_macs

  @property
  def per_frame_rewritten(self) -> int:
    return self.macs['keypoints_embedder'] + self.inference_generator_rewritten + self.sampling_macs


def report(config) -> Report:
  reference = config.copy_and_resolve_references()
  reference.skip_before_upsample = False
  rewritten = config.copy_and_resolve_references()
  rewritten.skip_before_upsample = True
  macs = mac_counts(reference)
  s = config.image_size
  return Report(parameters=parameter_counts(config), macs=macs,
                inference_generator_rewritten=mac_counts(rewritten)['inference_generator'],
                sampling_macs=s * s * 3 * 4)


ROWS = (
    ('identity_embedder', 'identity embedder', 'per avatar'),
    ('texture_generator', 'texture generator (+ learned input)', 'per avatar'),
    ('texture_projector', 'texture projector', 'per avatar'),
    ('inference_projector', 'inference projector', 'per avatar'),
    ('texture_enhancer', 'texture enhancer (one of its passes)', 'per avatar'),
    ('keypoints_embedder', 'keypoints embedder', 'per frame'),
    ('inference_generator', 'inference generator', 'per frame'),
    ('discriminator', 'discriminator', 'training'),
)


def format_report(config, r: Report) -> str:
  lines = [f'model size {config.get("size", "?")!r}: {config.image_size}x{config.image_size}, '
           f'harmonic keypoint encoding {"on" if config.pse_use_harmonic_enc else "off"}', '',
           f'| {"network":38s} | {"parameters":>12s} | {"MACs":>16s} | {"runs":10s} |',
           f'|{"-" * 40}|{"-" * 13}:|{"-" * 17}:|{"-" * 12}|']
  for key, label, when in ROWS:
    lines.append(f'| {label:38s} | {r.parameters[key]:>12,d} | {r.macs[key]:>16,d} | {when:10s} |')
  total_params = sum(r.parameters.values())
  lines.append(f'| {"total":38s} | {total_params:>12,d} | {"":>16s} | {"":10s} |')
  enhancer_passes = config.enh_unrolling_depth
  per_avatar = sum(r.macs[k] for k in ('identity_embedder', 'texture_generator', 'texture_projector',
                                        'inference_projector'))
  with_enhancer = per_avatar + enhancer_passes * r.macs['texture_enhancer'] + r.macs['keypoints_embedder'] \
      + r.macs['inference_generator']
  lines += [
      '',
      f'per frame, reference layout (keypoints MLP + inference generator + sampling): {r.per_frame:,d} MACs',
      f'  inference generator alone: {r.macs["inference_generator"]:,d}',
      f'per frame, adaptive skip convs before the upsampling (exact rewrite): {r.per_frame_rewritten:,d} MACs',
      f'  inference generator alone: {r.inference_generator_rewritten:,d}',
      f'per avatar without the enhancer: {per_avatar:,d} MACs',
      f'per avatar with the enhancer ({enhancer_passes} passes + one source-pose frame): {with_enhancer:,d} MACs',
  ]
  return '\n'.join(lines)

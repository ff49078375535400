"""The per-avatar graph: a photo -> texture and avatar_params, on the phone (two-file export, part 1).

  image (1, H, W, 3) in [-1, 1], stickman (1, H, W, 3) (drawn on the host: data_pipelines.faces.stickman),
  mask (1, H, W, 1) in [0, 1] (ones: no mask)
      --identity embedder--> embeddings --both projectors--> adaptive parameters
      --texture generator--> texture (1, H, W, 3);  inference parameters --frame_graph.frame_params-->
      avatar_params (1, P), the per-frame graph's runtime input

What `model.create_avatar(..., enhance=False)` computes, over arrays folded once in float64:
  - spectral norm: kernel / sigma (eval mode); the identity embedder has no norms (paper setting);
  - embedder skips of the down blocks: 1x1 conv after the 2x2 average pooling (they commute exactly; a
    quarter of the pixels);
  - embedder main branch of the down blocks: conv2 and the 2x2 average pooling after it are one 4x4 conv
    with stride 2 (the pooling's box filter folded into the kernel, resample_folds.py): the pooling keeps
    a quarter of conv2's outputs, so conv2 computes only those, at 4/9 of its MACs;
  - projectors: their MLPs are three linear layers without a nonlinearity, and the adaptive average pooling
    before them is linear too, so each MLP is one matrix from the embedding's e x e pixels to its outputs
    (pool matrix^T W1 W2 W3, with the composed bias), applied to all rows at once as a FULLY_CONNECTED
    of the transposed embedding (rows, e*e); its output (rows, outputs) is a predicted 1x1 conv's kernel
    in FULLY_CONNECTED's (C_out, C_in) layout, and every 1x1 conv with a predicted kernel is then a
    FULLY_CONNECTED with runtime weights. (LiteRT's GPU accelerator leaves a BATCH_MATMUL with a constant
    operand to the CPU, and computes a BATCH_MATMUL whose operands differ in rank, the form the converter
    makes of x.reshape(-1, C) @ kernel, wrongly: measured.) Each MLP's last output (a conv's bias, a norm's
    shift) has its own matmul, so that no 2-D SLICE (which phone GPU delegates reject) splits the outputs;
  - texture generator (ada_spade_bn): BatchNorm statistics folded into conv1 (norm2) or a constant
    affine (norm1, final norm); the modulation maps 1 + A_w(P), A_b(P) are matmuls of the constant SPADE
    inputs P with the predicted kernels; block 0's main branch up to norm2 depends on no input and is a
    precomputed constant; the adaptive skip convs are runtime matmuls before the upsampling;
  - texture generator, blocks 1 on: the nearest upsampling before conv1 is folded into conv1, a 2x2 conv
    on the low-resolution input with the four output phases as 4x the channels, interleaved by 4-D
    reshape / TRANSPOSE / reshape and one SLICE (resample_folds.py; 4/9 of conv1's MACs, plus one padded
    row and column of the low-resolution input). Exact there only: between the upsampling and conv1
    nothing acts, and what comes before it (norm1's BatchNorm and SPADE modulation, whose maps are at the
    block's input resolution, and the LReLU) acts per pixel, so it commutes with the upsampling. conv2
    follows norm2's SPADE at the output resolution and no upsampling: nothing to fold there.
Paper size: 57.7 GMAC (complexity.traced_macs of `avatar`), from 84.8 without these two folds: 17.8 G
of embedder conv2s and 9.3 G of texture-generator conv1s saved.
The texture enhancer is not in the graph (absent): its input is the gradient of a re-rendering loss
through the warp with respect to the texture, a scatter-add of every pixel's residual into four texels
(SCATTER_ND / a transposed GATHER in TFLite, which no GPU delegate has), taken four times after a
per-frame pass at the source pose. Two-file avatars are therefore the un-enhanced ones
(create_avatar(..., enhance=False)). Not built: the scatter-free form, where the bilinear weights factor
into row and column tents and the gradient is a runtime matmul (H, P) x diag(residual) x (P, W) per channel
(about 13 GMAC per step at 256x256).
"""
from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax import config as config_lib
from bilayer_jax import model as model_lib
from bilayer_jax.export import fold as fold_lib
from bilayer_jax.export import frame_graph
from bilayer_jax.export import resample_folds
from bilayer_jax.nn.layers import fold_spectral_norm
from bilayer_jax.nn.resample import adaptive_pool_matrix


def _f64(x):
  return np.asarray(x, np.float64)


def _conv_pair(p):
  return fold_lib._f32(p['kernel'], p['bias'])


def _fold_embedder(variables) -> dict:
  params = fold_spectral_norm(variables)['params']

  def blocks(prefix, down):
    names = sorted((k for k in params if k.startswith(prefix)), key=lambda k: int(k.split('_')[1]))
    conv2 = lambda p: (fold_lib._f32(resample_folds.pool_conv_kernel(p['kernel']), p['bias']) if down
                       else _conv_pair(p))
    return tuple(dict(conv1=_conv_pair(params[k]['conv1']), conv2=conv2(params[k]['conv2']),
                      skip=_conv_pair(params[k]['skip']) if 'skip' in params[k] else None) for k in names)

  return dict(conv_in=_conv_pair(params['conv_in']), encoder=blocks('encoder_', True),
              decoder=blocks('decoder_', False))


def _fold_projector(variables, plan, embedding_shapes) -> tuple:
  """Per embedding and MLP j: (head, last), each (g matrices (n, e*e), bias (n, 1)) with n = m_j - 1 and 1:
  the MLP composed with the pooling, transposed, split before its last output. A row of the projector
  regroups g consecutive channels: matrix a acts on channel a of each row."""
  params = fold_spectral_norm(variables)['params']
  out = []
  for k, (spec, (e, channels)) in enumerate(zip(plan, embedding_shapes)):
    s = spec['pool_size']
    g, rem = divmod(channels, spec['rows'])
    if rem or spec['row_length'] != g * s * s:
      raise ValueError(f'projector embedding {k}: rows of {spec["row_length"]} values from {channels} channels '
                       f'pooled to {s}x{s} are not whole channels; the export cannot fold this layout')
    pool = np.kron(adaptive_pool_matrix(e, s), adaptive_pool_matrix(e, s)).astype(np.float64)  # (s*s, e*e)
    mlps = []
    for j in range(len(spec['outputs'])):
      layers = [params[f'embedding_{k}_mlp_{j}_{n}'] for n in range(3)]
      matrix, bias = _f64(layers[0]['kernel']), _f64(layers[0]['bias'])
      for layer in layers[1:]:
        matrix, bias = matrix @ _f64(layer['kernel']), bias @ _f64(layer['kernel']) + _f64(layer['bias'])
      per_channel = [(pool.T @ matrix[a * s * s:(a + 1) * s * s]).T for a in range(g)]  # g x (m_j, e*e)
      split = lambda part: (tuple(np.asarray(m[part], np.float32) for m in per_channel),
                            np.asarray(bias[part], np.float32))
      mlps.append((split(slice(0, -1)), split(slice(-1, None))))
    out.append(tuple(mlps))
  return tuple(out)


def _bn(stats, eps):
  mean, var = _f64(stats['mean']), _f64(stats['var'])
  inv = 1.0 / np.sqrt(var + eps)
  return mean, inv


def _fold_texture_generator(variables, eps) -> dict:
  folded = fold_spectral_norm(variables)
  params, stats = folded['params'], folded['batch_stats']
  num = len([k for k in params if k.startswith('block_')])
  blocks = []
  for i in range(num):
    p, st = params[f'block_{i}'], stats[f'block_{i}']
    mean2, inv2 = _bn(st['norm2']['bn'], eps)
    conv1 = (_f64(p['conv1']['kernel']) * inv2, (_f64(p['conv1']['bias']) - mean2) * inv2)
    block = dict(conv2=_conv_pair(p['conv2']), spade2=np.asarray(p['norm2']['spade_input'], np.float32))
    if i == 0:
      # The learned input, plain BatchNorm, LReLU, upsampling, conv1, norm2's statistics: all constant.
      x = jnp.asarray(params['input'], jnp.float32)
      mean1, inv1 = _bn(st['norm1'], eps)
      s1 = _f64(p['norm1']['scale']) * inv1
      h = fold_lib._leaky_relu(x * s1.astype(np.float32) + (_f64(p['norm1']['bias']) - mean1 * s1).astype(np.float32))
      h = fold_lib._conv(fold_lib._upsample(h), *fold_lib._f32(*conv1))
      block.update(input=np.asarray(x), normalized=np.asarray(h))
    else:
      mean1, inv1 = _bn(st['norm1']['bn'], eps)
      conv1 = (resample_folds.upsample_conv_kernel(conv1[0]), resample_folds.upsample_conv_bias(conv1[1]))
      block.update(norm1=fold_lib._f32(inv1, -mean1 * inv1), conv1=fold_lib._f32(*conv1),
                   spade1=np.asarray(p['norm1']['spade_input'], np.float32))
    blocks.append(block)
  mean, inv = _bn(stats['final_norm']['bn'], eps)
  return dict(blocks=tuple(blocks), final_norm=fold_lib._f32(inv, -mean * inv),
              final_spade=np.asarray(params['final_norm']['spade_input'], np.float32), head=_conv_pair(params['head']))


@flax.struct.dataclass
class FoldedAvatar:
  """The per-avatar networks as float32 arrays (and the per-frame norms' statistics for avatar_params)."""
  embedder: Any
  texture_projector: Any
  inference_projector: Any
  texture_generator: Any
  frame_statistics: Any
  image_size: int = flax.struct.field(pytree_node=False, default=256)
  apply_masks: bool = flax.struct.field(pytree_node=False, default=True)
  use_stickman: bool = flax.struct.field(pytree_node=False, default=True)
  num_params: int = flax.struct.field(pytree_node=False, default=0)


def fold_avatar(model) -> FoldedAvatar:
  """Fold a `Bilayer`'s per-avatar networks (the paper's norms: none in the embedder, ada_spade_bn in the
  texture generator, ada_bn in the inference generator) into a `FoldedAvatar`."""
  config = model.config
  missing = [n for n in model_lib.AVATAR_NETWORKS + ('inference_generator',) if n not in model.variables]
  if missing:
    raise ValueError(f'the model lacks the networks {missing}')
  for field, want in (('emb_norm_layer_type', 'none'), ('tex_norm_layer_type', 'ada_spade_bn'),
                      ('inf_norm_layer_type', 'ada_bn')):
    if config[field] != want:
      raise ValueError(f'the per-avatar graph folds the paper setting {field}={want!r}; this model has {config[field]!r}')
  plans = config_lib.plans(config)
  e = config.emb_output_tensor_size
  shapes = [(e, c) for c in plans['identity_embedder']['decoder']]
  texture_projector = _fold_projector(model.variables['texture_projector'], plans['texture_projector'], shapes)
  inference_projector = _fold_projector(model.variables['inference_projector'], plans['inference_projector'], shapes)
  statistics = {name: fold_lib._f32(mean, inv) for name, (mean, inv) in frame_graph.norm_statistics(model).items()}
  return FoldedAvatar(
      embedder=_fold_embedder(model.variables['identity_embedder']),
      texture_projector=texture_projector, inference_projector=inference_projector,
      texture_generator=_fold_texture_generator(model.variables['texture_generator'], config.eps),
      frame_statistics=statistics, image_size=config.image_size, apply_masks=bool(config.emb_apply_masks),
      use_stickman=not config.emb_no_stickman,
      num_params=sum(n for _, n in frame_graph.param_layout(frame_graph.block_channels(model))))


# ----------------------------------------------------------------------------------------------------
# The per-avatar function over folded arrays (plain JAX: what jax2tf converts)

_leaky = fold_lib._leaky_relu
_conv = fold_lib._conv
_up = fold_lib._upsample


def _avg_pool(x):
  # Divided (not multiplied by 0.25): the form the converter turns into AVERAGE_POOL_2D.
  return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID') / 4.0


def _res_block(x, block, down: bool):
  h = _conv(_leaky(x), *block['conv1'])
  features = _leaky(h)
  skip = x
  if down:
    h, skip = resample_folds.pool_conv(features, *block['conv2']), _avg_pool(x)
  else:
    h = _conv(features, *block['conv2'])
  if block['skip'] is not None:
    skip = _conv(skip, *block['skip'])
  return h + skip, features


def embed(embedder, inputs) -> list:
  """The identity embedder: (1, H, W, 6) -> the decoder blocks' features (1, e, e, C_k)."""
  h = _conv(inputs, *embedder['conv_in'])
  for block in embedder['encoder']:
    h, _ = _res_block(h, block, down=True)
  embeddings = []
  for block in embedder['decoder']:
    h, features = _res_block(h, block, down=False)
    embeddings.append(features)
  return embeddings


def _fc(x, weights):
  """x (..., C_in) times weights (C_out, C_in) transposed: FULLY_CONNECTED, constant or runtime weights."""
  return jax.lax.dot_general(x, weights, (((x.ndim - 1,), (1,)), ((), ())))


def project(projector, embeddings) -> list:
  """Per embedding and MLP its outputs: (head (rows, m_j - 1), last (rows,)); a conv's
  (kernel (C_out, C_in), bias) or a norm's (scale (C, 1), shift)."""
  groups = []
  for mlps, embedding in zip(projector, embeddings):
    _, e, _, channels = embedding.shape
    g = len(mlps[0][0][0])
    # Channel a of every row, sliced in 4-D (phone GPU delegates slice 3-D and 4-D tensors only), as (rows, e*e).
    rows = [embedding[..., a::g].reshape(e * e, channels // g).T for a in range(g)]

    def apply(part):
      weights, bias = part
      out = bias
      for matrix, x in zip(weights, rows):
        out = out + _fc(x, matrix)
      return out

    groups.append([(apply(head), apply(last).reshape(-1)) for head, last in mlps])
  return groups


def _matmul_1x1(x, kernel_t, bias):
  """A 1x1 conv with a predicted kernel (C_out, C_in): FULLY_CONNECTED with runtime weights."""
  return _fc(x, kernel_t) + bias


def _spade(y, spade_input, weight_rows, bias_rows):
  """y * (1 + A_w(P)) + A_b(P) for the normalized y; A_* are the predicted 1x1 convs of the constant P."""
  gain = _matmul_1x1(spade_input, *weight_rows)
  return y * (gain + 1.0) + _matmul_1x1(spade_input, *bias_rows)


def generate_texture(generator, groups):
  """The texture generator from its projector's groups (per block: norm2 weight, norm2 bias, skip, next
  norm1 weight, next norm1 bias). Returns (1, H, W, 3) in [-1, 1]."""
  previous = None  # the last two groups of the previous embedding drive this block's norm1
  h = None
  for block, group in zip(generator['blocks'], groups):
    if previous is None:
      x = block['input']
      y = block['normalized']
    else:
      x = h
      scale, shift = block['norm1']
      n1 = _spade(x * scale + shift, block['spade1'], *previous)
      y = resample_folds.upsample_conv(_leaky(n1), *block['conv1'])
    h = _conv(_leaky(_spade(y, block['spade2'], group[0], group[1])), *block['conv2'])
    h = h + _up(_matmul_1x1(x, *group[2]))
    previous = (group[3], group[4])
  scale, shift = generator['final_norm']
  h = _leaky(_spade(h * scale + shift, generator['final_spade'], *previous))
  return jnp.tanh(_conv(h, *generator['head']))


def inference_adaptive(groups) -> dict:
  """The inference generator's adaptive parameters (generator_adaptive_params' structure, leading axis 1)
  from its projector's groups (per block: norm2, skip conv, next norm; see `project`)."""
  adaptive = {f'block_{k}': {} for k in range(len(groups))}
  norm = lambda t: {'scale': t[0].reshape(1, -1), 'shift': t[1][None]}
  for k, group in enumerate(groups):
    kernel_t, bias = group[1]
    adaptive[f'block_{k}']['norm2'] = norm(group[0])
    # kernel_t: (C_out, C_in), the layout avatar_params stores (frame_graph.frame_params)
    adaptive[f'block_{k}']['skip'] = {'kernel_t': kernel_t[None], 'bias': bias[None]}
    target = adaptive[f'block_{k + 1}'] if k + 1 < len(groups) else adaptive
    target['norm1' if k + 1 < len(groups) else 'final_norm'] = norm(group[2])
  return adaptive


def avatar(folded: FoldedAvatar, image, stickman, mask) -> dict:
  """image, stickman (1, H, W, 3), mask (1, H, W, 1) -> {'texture': (1, H, W, 3), 'avatar_params': (1, P)}."""
  x = (image + 1.0) * mask - 1.0 if folded.apply_masks else image  # background -1, as embedder_inputs
  inputs = jnp.concatenate([x, stickman], axis=-1) if folded.use_stickman else x
  embeddings = embed(folded.embedder, inputs)
  texture = generate_texture(folded.texture_generator, project(folded.texture_projector, embeddings))
  adaptive = inference_adaptive(project(folded.inference_projector, embeddings))
  return dict(texture=texture, avatar_params=frame_graph.frame_params(folded.frame_statistics, adaptive))


def tf_avatar_function(folded: FoldedAvatar):
  """A tf.function (image, stickman (1, H, W, 3), mask (1, H, W, 1)) -> {'texture', 'avatar_params'}."""
  import tensorflow as tf
  from jax.experimental import jax2tf

  converted = jax2tf.convert(functools.partial(avatar, folded), with_gradient=False)
  s = folded.image_size
  specs = [tf.TensorSpec((1, s, s, 3), tf.float32, name='image'),
           tf.TensorSpec((1, s, s, 3), tf.float32, name='stickman'),
           tf.TensorSpec((1, s, s, 1), tf.float32, name='mask')]
  return tf.function(lambda image, stickman, mask: converted(image, stickman, mask), input_signature=specs,
                     autograph=False)

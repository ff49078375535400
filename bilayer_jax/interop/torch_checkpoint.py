"""The authors' PyTorch checkpoints -> our variables (`bilayer-jax import-torch`).

A run folder of the reference holds `args.txt` (every flag, "name: value" per line) and
`checkpoints/{epoch}_{network}.pth` (one state dict per network wrapper). This module maps every tensor
onto our variable tree by an explicit naming rule per network (spec section 11):

  conv weight OIHW -> kernel HWIO; linear weight (out, in) -> kernel (in, out);
  spectral norm: weight_orig -> kernel, weight_u -> sn/u, weight_v -> sn/v (u, v keep PyTorch's layout);
  BatchNorm weight/bias -> scale/bias, running_mean/var -> batch_stats mean/var (PyTorch stores the
  unbiased variance, and so do we); SPADE tensors and the learned input (1, C, S, S) -> (1, S, S, C).

Unknown or missing tensors and shape mismatches are refused with a message that names them.
torch is an optional dependency (`pip install bilayer-jax[torch]`), used only to read the .pth files
(`torch.load(weights_only=True)`: no pickled code runs).
"""
from __future__ import annotations

import pathlib
import re

import numpy as np

from bilayer_jax import checkpoint as checkpoint_lib
from bilayer_jax import config as config_lib
from bilayer_jax.interop.state_dict import read_state_dict

# The authors' checkpoint files: each `{epoch}_{file}.pth` -> our networks it holds, and the state-dict key
# prefix under which it holds each (the file format's names, not ours).
REFERENCE_FILES = {
    'identity_embedder': {'identity_embedder': 'net'},
    'texture_generator': {'texture_generator': 'gen_tex', 'texture_projector': 'prj_tex'},
    'keypoints_embedder': {'keypoints_embedder': 'net'},
    'inference_generator': {'inference_generator': 'gen_inf', 'inference_projector': 'prj_inf'},
    'texture_enhancer': {'texture_enhancer': 'net'},
    'discriminator': {'discriminator': 'net'},
}
_KEY_ROOT = {ours: root for held in REFERENCE_FILES.values() for ours, root in held.items()}
# Buffers the reference stores that we recompute from the config.
IGNORED_BUFFERS = {'inference_generator': ('identity_grid',), 'keypoints_embedder': ('frequencies',)}


class ImportError_(ValueError):
  """A reference checkpoint that does not fit (named so that it cannot shadow the builtin)."""


def parse_args_txt(text: str) -> dict:
  """The reference's args.txt: 'name: value' lines; ints, floats, True/False, the rest strings."""
  args = {}
  for line in text.splitlines():
    if not line.strip():
      continue
    if ': ' not in line:
      key, value = line.rstrip(':'), ''
    else:
      key, value = line.split(': ', 1)
    args[key.strip()] = _parse_value(value)
  return args


def _parse_value(v: str):
  if re.fullmatch(r'-?\d+', v):
    return int(v)
  try:
    return float(v)
  except ValueError:
    pass
  if v in ('True', 'False'):
    return v == 'True'
  return v


def config_from_args(args: dict, spn_networks: str):
  """Our model config from the reference flags (only the flags that shape the networks)."""
  config = config_lib.paper()
  config.size = 'imported'
  missing = [f for f in config_lib.NETWORK_FLAGS if f not in args and f not in _OPTIONAL_FLAGS]
  if missing:
    raise ImportError_(f'args.txt lacks the network flags {missing}')
  for flag in config_lib.NETWORK_FLAGS:
    if flag in args:
      value = args[flag]
      expected = type(config[flag])
      if expected is float and isinstance(value, int):
        value = float(value)
      if expected is bool and not isinstance(value, bool):
        raise ImportError_(f'args.txt: {flag} should be True or False, got {value!r}')
      if expected is str:
        value = str(value)
      config[flag] = value
  if args.get('emb_activation_type', 'leakyrelu') != 'leakyrelu':
    raise ImportError_('only leakyrelu activations are supported')
  for flag in ('tex_upsampling_type', 'inf_upsampling_type', 'enh_upsampling_type'):
    if args.get(flag, 'nearest') != 'nearest':
      raise ImportError_(f'{flag}={args[flag]!r} is not supported (nearest)')
  for flag in ('emb_downsampling_type', 'dis_downsampling_type', 'enh_downsampling_type'):
    if args.get(flag, 'avgpool') != 'avgpool':
      raise ImportError_(f'{flag}={args[flag]!r} is not supported (avgpool)')
  if args.get('num_source_frames', 1) != 1:
    raise ImportError_('only one source frame per identity is supported (num_source_frames=1)')
  if args.get('tex_pixelwise_bias_type', 'none') != 'none':
    raise ImportError_('tex_pixelwise_bias_type other than none is not supported')
  if args.get('pse_norm_layer_type', 'none') != 'none':
    raise ImportError_('pse_norm_layer_type other than none is not supported')
  if isinstance(args.get('pse_emb_source_pose'), bool):
    config.pse_emb_source_pose = args['pse_emb_source_pose']
  config.spn_networks = spn_networks
  try:
    config_lib.validate(config)
  except ValueError as e:
    raise ImportError_(f'args.txt describes a model we cannot build: {e}') from e
  return config


# Flags whose reference defaults match ours, so old args.txt files without them still import.
_OPTIONAL_FLAGS = {'emb_no_stickman', 'dis_no_stickman', 'enh_guiding_rgb_loss_type', 'enh_norm_layer_type',
                   'emb_apply_masks', 'pse_num_harmonics', 'enh_num_channels', 'enh_max_channels',
                   'enh_bottleneck_tensor_size', 'enh_num_blocks', 'enh_unrolling_depth'}


# ------------------------------------------------------------------------------------------------------
# Module names: our path -> the reference's state-dict prefix


def _resblock_prefix(prefix, sub, norm: bool, up: bool, efficient: bool):
  """Our ResBlock submodule (norm1, conv1, norm2, conv2, skip) -> the reference's Sequential index."""
  conv1 = (1 if norm else 0) + 1 + (1 if up and not efficient else 0)
  index = {
      'norm1': 'block_feats.0',
      'conv1': f'block_feats.{conv1}',
      'norm2': f'block_feats.{conv1 + 1}',
      'conv2': f'block.{1 if up and efficient else 0}',
      'skip': f'skip.{1 if up else 0}',
  }
  if sub not in index:
    raise KeyError(sub)
  return f'{prefix}.{index[sub]}'


def module_prefix(network: str, path: tuple[str, ...], config) -> str:
  """The reference's state-dict prefix of our module at `path` (without leaf, 'sn' or 'bn')."""
  p = config_lib.plans(config)
  head, rest = path[0], path[1:]
  root = _KEY_ROOT[network]

  def block(prefix, norm, up, efficient):
    return _resblock_prefix(prefix, rest[0], norm, up, efficient)

  if network == 'identity_embedder':
    norm = config.emb_norm_layer_type != 'none'
    if head == 'conv_in':
      return f'{root}.enc.0'
    if m := re.fullmatch(r'encoder_(\d+)', head):
      return block(f'{root}.enc.{int(m[1]) + 1}', norm, False, False)
    if m := re.fullmatch(r'decoder_(\d+)', head):
      return block(f'{root}.dec_blocks.{m[1]}', norm, False, False)
  elif network == 'texture_generator':
    if head == 'head':
      return f'{root}.heads.0.0'
    if head == 'final_norm':
      return f'{root}.blocks.{len(p["texture_generator"]["blocks"])}'
    if m := re.fullmatch(r'block_(\d+)', head):
      return block(f'{root}.blocks.{m[1]}', True, True, False)
  elif network == 'inference_generator':
    heads = {'head_uv': 0, 'head_rgb': 1, 'head_mask': 2}
    if head in heads:
      return f'{root}.heads.{heads[head]}.0'
    if head == 'final_norm':
      return f'{root}.blocks.{len(p["inference_generator"]["blocks"])}'
    if m := re.fullmatch(r'block_(\d+)', head):
      return block(f'{root}.blocks.{m[1]}', True, True, True)
  elif network in ('texture_projector', 'inference_projector'):
    if m := re.fullmatch(r'embedding_(\d+)_mlp_(\d+)_(\d+)', head):
      return f'{root}.fc_blocks.{m[1]}.{m[2]}.{m[3]}'
  elif network == 'keypoints_embedder':
    if m := re.fullmatch(r'dense_(\d+)', head):
      return f'{root}.mlp.{2 * int(m[1])}'
  elif network == 'discriminator':
    norm = config.dis_norm_layer_type != 'none'
    named = {'conv_in': f'{root}.first_conv', 'final_norm': f'{root}.final_block.0', 'head': f'{root}.linear'}
    if head in named:
      return named[head]
    if m := re.fullmatch(r'block_(\d+)', head):
      return block(f'{root}.blocks.{m[1]}', norm, False, False)
  elif network == 'texture_enhancer':
    e = p['texture_enhancer']
    n_down, n_mid, n_up = len(e['down']), e['middle'], len(e['up'])
    if head == 'conv_in':
      return f'{root}.blocks.0'
    if head == 'conv_out':
      return f'{root}.blocks.{1 + n_down + n_mid + n_up + 2}'
    for name, offset, up in (('down', 1, False), ('middle', 1 + n_down, False), ('up', 1 + n_down + n_mid, True)):
      if m := re.fullmatch(rf'{name}_(\d+)', head):
        return block(f'{root}.blocks.{offset + int(m[1])}', False, up, False)
  raise KeyError(f'no reference name for {network}/{"/".join(path)}')


def torch_key(network: str, collection: str, path: tuple[str, ...], config, spectral: bool):
  """(reference state-dict key, conversion) for one of our variables."""
  leaf = path[-1]
  if network == 'texture_generator' and path == ('input',):
    return 'gen_tex_input', 'nchw'
  if collection == 'spectral':            # .../module/sn/{u,v}
    prefix = module_prefix(network, path[:-2], config)
    return f'{prefix}.weight_{leaf}', 'none'
  if collection == 'batch_stats':
    adaptive = len(path) >= 3 and path[-2] == 'bn'  # .../normX/bn/{mean,var} inside an adaptive norm
    prefix = module_prefix(network, path[:-2] if adaptive else path[:-1], config)
    stat = {'mean': 'running_mean', 'var': 'running_var'}[leaf]
    return (f'{prefix}.norm_layer.{stat}' if adaptive else f'{prefix}.{stat}'), 'none'
  prefix = module_prefix(network, path[:-1], config)
  if leaf == 'spade_input':
    return f'{prefix}.pixel_feats', 'nchw'
  if leaf == 'scale':
    return f'{prefix}.weight', 'none'
  if leaf == 'kernel':
    return f'{prefix}.weight_orig' if spectral else f'{prefix}.weight', 'kernel'
  if leaf == 'bias':
    return f'{prefix}.bias', 'none'
  raise KeyError(f'no reference name for {network}/{collection}/{"/".join(path)}')


def convert(value: np.ndarray, how: str) -> np.ndarray:
  if how == 'kernel':
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
  if how == 'nchw':
    return value.transpose(0, 2, 3, 1)
  return value


def leaves_with_paths(tree, path=()):
  """(path tuple, leaf) of a nested dict, depth first."""
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from leaves_with_paths(v, path + (k,))
    else:
      yield path + (k,), v


def available_epochs(run_dir) -> list[int]:
  names = [p.name for p in (pathlib.Path(run_dir) / 'checkpoints').glob('*_*.pth')]
  return sorted({int(m[1]) for n in names if (m := re.fullmatch(r'(\d+)_(.+)\.pth', n)) and m[2] in REFERENCE_FILES})


def import_run(run_dir, epoch: int | None = None, networks=None):
  """Read a reference run folder; returns (config, variables) for the networks found.

  networks: reference names to import (default: every network with a file for that epoch).
  """
  from bilayer_jax import model  # local: model imports are heavy

  run_dir = pathlib.Path(run_dir)
  args_path = run_dir / 'args.txt'
  if not args_path.is_file():
    raise FileNotFoundError(f'{args_path} not found: expected the authors\' run folder (args.txt, checkpoints/)')
  args = parse_args_txt(args_path.read_text())
  epochs = available_epochs(run_dir)
  if epoch is None:
    if not epochs:
      raise FileNotFoundError(f'no checkpoints/{{epoch}}_{{network}}.pth files in {run_dir}')
    epoch = epochs[-1]
  files = {name: run_dir / 'checkpoints' / f'{epoch}_{name}.pth' for name in REFERENCE_FILES}
  wanted = list(networks) if networks else [n for n, f in files.items() if f.is_file()]
  unknown = set(wanted) - set(REFERENCE_FILES)
  if unknown:
    raise ImportError_(f'unknown networks {sorted(unknown)}; known: {sorted(REFERENCE_FILES)}')
  if not wanted:
    raise FileNotFoundError(f'no network checkpoints for epoch {epoch} in {run_dir / "checkpoints"} '
                            f'(epochs found: {epochs or "none"})')
  states = {}
  for name in wanted:
    if not files[name].is_file():
      raise FileNotFoundError(f'{files[name]} not found')
    states[name] = {k: v.astype(np.float32) if v.dtype.kind == 'f' else v
                    for k, v in read_state_dict(files[name], f'the {name} checkpoint').items()}

  spectral = [name for name, state in states.items() if any(k.endswith('.weight_orig') for k in state)]
  for name in states:
    plain = [k for k in states[name] if k.endswith('.weight') and k.replace('.weight', '.weight_orig') not in states[name]]
    if name in spectral and any(_is_layer_weight(k, states[name]) for k in plain):
      raise ImportError_(f'{name}: mixes spectrally normalized and plain layers, which we do not support')
  config = config_from_args(args, ', '.join(spectral))
  ours = [n for name in wanted for n in REFERENCE_FILES[name]]
  shapes = model.variable_shapes(config, ours)
  sn_networks = config_lib.spectral_norm_networks(config)

  variables = {}
  for ref_name in wanted:
    state = dict(states[ref_name])
    used = set()
    problems = []
    for network in REFERENCE_FILES[ref_name]:
      tree = {}
      for path, shape in leaves_with_paths(shapes[network]):
        collection, rest = path[0], path[1:]
        key, how = torch_key(network, collection, rest, config, network in sn_networks)
        if key not in state:
          problems.append(f'missing {key} (for {network}/{"/".join(path)})')
          continue
        value = convert(state[key], how)
        if tuple(value.shape) != tuple(shape.shape):
          problems.append(f'{key}: shape {tuple(state[key].shape)} does not fit {network}/{"/".join(path)} '
                          f'{tuple(shape.shape)}')
          continue
        used.add(key)
        node = tree
        for p in path[:-1]:
          node = node.setdefault(p, {})
        node[path[-1]] = value.astype(np.float32)
      variables[network] = tree
    ignored = IGNORED_BUFFERS.get(ref_name, ())
    extra = [k for k in state if k not in used and not k.endswith('num_batches_tracked') and k not in ignored]
    problems += [f'unknown key {k} {tuple(np.shape(state[k]))}' for k in sorted(extra)]
    if problems:
      shown = '\n  '.join(problems[:30]) + ('' if len(problems) <= 30 else f'\n  ... and {len(problems) - 30} more')
      raise ImportError_(f'{files[ref_name]} does not match the model that args.txt describes:\n  {shown}')
  return config, variables


def _is_layer_weight(key: str, state: dict) -> bool:
  """A plain conv/linear weight (not a BatchNorm weight, which has running statistics beside it)."""
  prefix = key[: -len('.weight')]
  return f'{prefix}.running_mean' not in state


def import_to_checkpoint(run_dir, out_dir, epoch: int | None = None, networks=None, overwrite: bool = False):
  """import_run + checkpoint.save; refuses an existing out_dir unless overwrite."""
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists() and not overwrite:
    raise FileExistsError(f'{out_dir} already exists; choose another path or pass --overwrite')
  config, variables = import_run(run_dir, epoch, networks)
  return checkpoint_lib.save(out_dir, config, variables, overwrite=overwrite), config, variables

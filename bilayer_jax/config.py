"""Model sizes and the channel plans derived from them.

A model config is an `ml_collections.ConfigDict` whose field names are the authors' command-line flags
(`emb_num_channels`, `inf_max_channels`, ...), so that a run's `args.txt` maps onto it one to one. The
networks never read the config themselves: `plans` turns it into plain per-network arguments.

Named sizes:
  paper  the flags of the authors' training scripts (spec section 0), 256x256.
  small  the paper's layout with a quarter of the channels, 256x256.
  tiny   64x64 with few channels: seconds on a CPU, for tests and the quickstart demo.
  micro  32x32, a handful of channels: training-step tests that compile many times (and parity fixture a).
  fixture_b  64x64, a layout unlike the others (4x4 embedding, 8x8 generator inputs, 3 keypoint blocks, no
         harmonics): parity fixture b, to catch layout slips the regular sizes share.
"""
from __future__ import annotations

import math

import ml_collections


# Flags that change the networks; everything else in an args.txt is about training or data.
NETWORK_FLAGS = (
    'image_size', 'eps', 'num_keypoints',
    'emb_num_channels', 'emb_max_channels', 'emb_output_tensor_size', 'emb_norm_layer_type', 'emb_no_stickman',
    'emb_apply_masks',
    'tex_num_channels', 'tex_max_channels', 'tex_input_tensor_size', 'tex_norm_layer_type', 'tex_skip_layer_type',
    'inf_num_channels', 'inf_max_channels', 'inf_input_tensor_size', 'inf_norm_layer_type', 'inf_skip_layer_type',
    'inf_pred_segmentation',
    'pse_num_channels', 'pse_num_blocks', 'pse_in_channels', 'pse_use_harmonic_enc', 'pse_num_harmonics',
    'dis_num_channels', 'dis_max_channels', 'dis_num_blocks', 'dis_output_tensor_size', 'dis_norm_layer_type',
    'dis_no_stickman',
    'enh_num_channels', 'enh_max_channels', 'enh_bottleneck_tensor_size', 'enh_num_blocks', 'enh_unrolling_depth',
    'enh_guiding_rgb_loss_type', 'enh_norm_layer_type',
)


def paper() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.size = 'paper'
  c.image_size = 256
  c.eps = 1e-7
  c.num_keypoints = 68
  # identity embedder
  c.emb_num_channels = 64
  c.emb_max_channels = 512
  c.emb_output_tensor_size = 8
  c.emb_norm_layer_type = 'none'
  c.emb_no_stickman = False
  c.emb_apply_masks = True
  # texture generator
  c.tex_num_channels = 64
  c.tex_max_channels = 512
  c.tex_input_tensor_size = 4
  c.tex_norm_layer_type = 'ada_spade_bn'
  c.tex_skip_layer_type = 'ada_conv'
  # inference generator
  c.inf_num_channels = 32
  c.inf_max_channels = 256
  c.inf_input_tensor_size = 4
  c.inf_norm_layer_type = 'ada_bn'
  c.inf_skip_layer_type = 'ada_conv'
  c.inf_pred_segmentation = True
  # keypoints embedder; harmonics on is what the authors' scripts effectively ran (docs/model.md §0, bug B4)
  c.pse_num_channels = 256
  c.pse_num_blocks = 4
  c.pse_in_channels = 136
  c.pse_use_harmonic_enc = True
  c.pse_num_harmonics = 4
  # Training only: the scripts also embed the source poses every step (the same B4 switch). Stage 1 does
  # not use that embedding, but the call is one more spectral-norm power iteration of the embedder.
  c.pse_emb_source_pose = True
  # discriminator
  c.dis_num_channels = 64
  c.dis_max_channels = 512
  c.dis_num_blocks = 6
  c.dis_output_tensor_size = 8
  c.dis_norm_layer_type = 'bn'
  c.dis_no_stickman = False
  # texture enhancer (defaults of the reference; the scripts do not set them)
  c.enh_num_channels = 64
  c.enh_max_channels = 128
  c.enh_bottleneck_tensor_size = 128
  c.enh_num_blocks = 8
  c.enh_unrolling_depth = 4
  c.enh_guiding_rgb_loss_type = 'sse'
  c.enh_norm_layer_type = 'none'
  # not flags of the authors: how this implementation runs the same math
  # Networks with spectral norm (W, u, v stored), in the authors' names; texture_generator and
  # inference_generator include their projectors. Stage 2 adds the enhancer (docs/model.md §1.7).
  c.spn_networks = ('identity_embedder, texture_generator, keypoints_embedder, inference_generator, '
                    'discriminator, texture_enhancer')
  c.align_corners = False            # texture sampling semantics (docs/model.md Q9)
  c.upsample_mode = 'resize'         # 'resize' (exports to RESIZE_NEAREST_NEIGHBOR) or 'broadcast'
  c.downsample_mode = 'reduce_window'  # 'reduce_window' (exports to AVERAGE_POOL_2D) or 'reshape'
  c.skip_before_upsample = True      # exact rewrite of the generators' adaptive skips (3.94 G per frame)
  c.bn_momentum = 1.0                # PyTorch convention: 1.0 = running stats are the last batch's
  c.axis_name = ''                   # device axis for synchronized BatchNorm ('' = none)
  return c


def small() -> ml_collections.ConfigDict:
  c = paper()
  c.size = 'small'
  for prefix in ('emb', 'tex', 'inf', 'dis', 'enh'):
    c[f'{prefix}_num_channels'] //= 4
    c[f'{prefix}_max_channels'] //= 4
  c.pse_num_channels //= 4
  return c


def tiny() -> ml_collections.ConfigDict:
  c = paper()
  c.size = 'tiny'
  c.image_size = 64
  c.emb_num_channels, c.emb_max_channels = 8, 32
  c.tex_num_channels, c.tex_max_channels = 8, 32
  c.inf_num_channels, c.inf_max_channels = 4, 16
  c.pse_num_channels = 32
  c.dis_num_channels, c.dis_max_channels = 8, 32
  c.enh_num_channels, c.enh_max_channels = 8, 16
  c.enh_bottleneck_tensor_size = 32
  c.enh_num_blocks = 2
  return c


REFERENCE_NETWORKS = ('identity_embedder', 'texture_generator', 'keypoints_embedder', 'inference_generator',
                      'texture_enhancer', 'discriminator')


def spectral_norm_networks(c) -> set[str]:
  """Our network names (projectors included) that use spectral norm under `c.spn_networks`."""
  names = {n.strip() for n in c.spn_networks.split(',') if n.strip()}
  unknown = names - set(REFERENCE_NETWORKS)
  if unknown:
    raise ValueError(f'spn_networks names unknown networks {sorted(unknown)}; known: {REFERENCE_NETWORKS}')
  if 'texture_generator' in names:
    names.add('texture_projector')
  if 'inference_generator' in names:
    names.add('inference_projector')
  return names


def micro() -> ml_collections.ConfigDict:
  c = tiny()
  c.size = 'micro'
  c.image_size = 32
  c.emb_num_channels, c.emb_max_channels = 4, 16
  c.tex_num_channels, c.tex_max_channels = 4, 16
  c.inf_num_channels, c.inf_max_channels = 2, 8
  c.pse_num_channels = 16
  c.dis_num_channels, c.dis_max_channels, c.dis_num_blocks = 4, 16, 3
  c.enh_num_channels, c.enh_max_channels = 4, 8
  c.enh_bottleneck_tensor_size = 16
  c.enh_num_blocks = 1
  return c


def fixture_b() -> ml_collections.ConfigDict:
  c = micro()
  c.size = 'fixture_b'
  c.image_size = 64
  c.emb_output_tensor_size = 4
  c.tex_input_tensor_size = c.inf_input_tensor_size = 8
  c.inf_num_channels, c.inf_max_channels = 4, 16
  c.pse_num_channels, c.pse_num_blocks, c.pse_use_harmonic_enc = 24, 3, False
  c.dis_max_channels, c.dis_num_blocks, c.dis_output_tensor_size = 8, 5, 4
  c.enh_unrolling_depth = 2
  return c


# The one table of named sizes: tools, benchmarks, tests and the reference flags (flags_of) derive from it.
MAKERS = {'paper': paper, 'small': small, 'tiny': tiny, 'micro': micro, 'fixture_b': fixture_b}
SIZES = tuple(MAKERS)
# Flags whose paper values the authors' scripts set (the reference's defaults differ); with every flag where
# a size departs from the paper, they are the command line that builds that size in the reference.
SCRIPT_FLAGS = ('image_size', 'emb_norm_layer_type', 'tex_norm_layer_type', 'inf_norm_layer_type',
                'dis_norm_layer_type', 'inf_num_channels', 'inf_max_channels', 'pse_use_harmonic_enc',
                'inf_pred_segmentation')


def flags_of(size: str) -> dict:
  """The authors' network flags that build our named size in their code (our fields are their flags)."""
  config, paper_config = get_config(size), get_config('paper')
  return {k: config[k] for k in NETWORK_FLAGS if k in SCRIPT_FLAGS or config[k] != paper_config[k]}


def get_config(size: str = 'paper') -> ml_collections.ConfigDict:
  """A named model size (see the module docstring)."""
  if size not in MAKERS:
    raise ValueError(f'unknown model size {size!r}; expected one of {list(MAKERS)}')
  config = MAKERS[size]()
  validate(config)
  return config


def _log2_ratio(big: int, small: int, what: str) -> int:
  ratio = big // small
  n = int(math.log(ratio, 2)) if ratio >= 1 else 0
  if small <= 0 or big % small or 2 ** n != ratio:
    raise ValueError(f'{what}: image_size / tensor size must be a power of two, got {big} / {small}')
  return n


def _ch(base: int, i: int, cap: int) -> int:
  return min(int(base * 2 ** i), cap)


def plans(c) -> dict:
  """Per-network layer plans (channel lists, tensor sizes, projector shapes) from a config.

  The formulas are the reference implementation's, so that every size it can build maps onto ours.
  """
  n_tex = _log2_ratio(c.image_size, c.tex_input_tensor_size, 'texture generator')
  n_inf = _log2_ratio(c.image_size, c.inf_input_tensor_size, 'inference generator')
  n_emb = _log2_ratio(c.image_size, c.emb_output_tensor_size, 'identity embedder')
  n_dis = _log2_ratio(c.image_size, c.dis_output_tensor_size, 'discriminator')
  n_enh = _log2_ratio(c.image_size, c.enh_bottleneck_tensor_size, 'texture enhancer')

  emb_enc = [_ch(c.emb_num_channels, i, c.emb_max_channels) for i in range(1, n_emb + 1)]
  # The embedder's decoder produces one embedding per texture-generator block, at its width.
  emb_dec = [_ch(c.tex_num_channels, i, c.tex_max_channels) for i in range(n_tex - 1, -1, -1)]
  tex_blocks = [_ch(c.tex_num_channels, i, c.tex_max_channels) for i in range(n_tex - 1, -1, -1)]
  tex_in = _ch(c.tex_num_channels, n_tex, c.tex_max_channels)
  inf_blocks = [_ch(c.inf_num_channels, i, c.inf_max_channels) for i in range(n_inf - 1, -1, -1)]
  inf_in = _ch(c.inf_num_channels, n_inf, c.inf_max_channels)

  def projector(gen_prefix, n_blocks, kind):
    rows = []
    for k, i in enumerate(range(n_blocks, 0, -1)):
      hidden = _ch(c.emb_num_channels, i, c.emb_max_channels)
      block_in = _ch(c[f'{gen_prefix}_num_channels'], i, c[f'{gen_prefix}_max_channels'])
      block_out = _ch(c[f'{gen_prefix}_num_channels'], i - 1, c[f'{gen_prefix}_max_channels'])
      mult = block_in / float(hidden)
      size = int(1024 ** 0.5 * mult)
      embed_channels = emb_dec[k]
      num_rows = int(embed_channels * mult)
      if num_rows != block_out or (embed_channels * size * size) % num_rows:
        raise ValueError(
            f'{gen_prefix} projector: embedding {k} ({embed_channels} channels) cannot be regrouped into '
            f'{block_out} rows; the reference cannot build this configuration either')
      if kind == 'ada_spade_bn':
        outputs = [block_out + 1, block_out + 1, block_in + 1, block_out + 1, block_out + 1]
      else:
        outputs = [2, block_in + 1, 2]
      rows.append(dict(hidden=hidden, pool_size=size, rows=num_rows,
                       row_length=int(size ** 2 / mult), outputs=outputs))
    return rows

  if n_inf != n_tex:
    raise ValueError('tex_input_tensor_size and inf_input_tensor_size must give the same number of blocks')
  if c.tex_max_channels != tex_in:
    raise ValueError(f'texture generator input has {c.tex_max_channels} channels but block 0 expects {tex_in}')
  if c.inf_max_channels != inf_in:
    raise ValueError(f'pose embedding has {c.inf_max_channels} channels but block 0 expects {inf_in}')
  for name, value in (('tex', c.tex_norm_layer_type), ('inf', c.inf_norm_layer_type)):
    if value not in ('ada_bn', 'ada_spade_bn'):
      raise ValueError(f'{name}_norm_layer_type={value!r} is not supported (ada_bn or ada_spade_bn)')
  for name in ('tex_skip_layer_type', 'inf_skip_layer_type'):
    if c[name] != 'ada_conv':
      raise ValueError(f'{name}={c[name]!r} is not supported (ada_conv)')
  if c.enh_norm_layer_type != 'none':
    raise ValueError('enh_norm_layer_type must be none (the reference builds a 3-channel final norm otherwise)')

  dis_blocks = [_ch(c.dis_num_channels, i, c.dis_max_channels) for i in range(1, n_dis + 1)]
  dis_blocks += [dis_blocks[-1] if dis_blocks else c.dis_num_channels] * max(0, c.dis_num_blocks - n_dis)
  enh_down = [_ch(c.enh_num_channels, i, c.enh_max_channels) for i in range(1, n_enh + 1)]
  enh_up = [_ch(c.enh_num_channels, i, c.enh_max_channels) for i in range(n_enh - 1, -1, -1)]

  pose_in = c.pse_in_channels * (2 * c.pse_num_harmonics if c.pse_use_harmonic_enc else 1)
  return dict(
      identity_embedder=dict(first=c.emb_num_channels, encoder=emb_enc, decoder=emb_dec,
                             in_features=3 if c.emb_no_stickman else 6),
      texture_generator=dict(input_size=c.tex_input_tensor_size, input_features=c.tex_max_channels,
                             blocks=tex_blocks),
      texture_projector=projector('tex', n_tex, c.tex_norm_layer_type),
      inference_generator=dict(blocks=inf_blocks),
      inference_projector=projector('inf', n_inf, c.inf_norm_layer_type),
      keypoints_embedder=dict(in_features=pose_in, hidden=c.pse_num_channels, num_layers=c.pse_num_blocks,
                              out_features=c.inf_max_channels, out_size=c.inf_input_tensor_size),
      discriminator=dict(first=c.dis_num_channels, blocks=dis_blocks, num_down=n_dis),
      texture_enhancer=dict(first=c.enh_num_channels, down=enh_down, middle=c.enh_num_blocks, up=enh_up),
  )


def validate(c) -> None:
  """Raise a clear error for a config the networks cannot be built from."""
  if c.num_keypoints * 2 != c.pse_in_channels:
    raise ValueError(f'pse_in_channels ({c.pse_in_channels}) must be 2 * num_keypoints ({c.num_keypoints})')
  plans(c)

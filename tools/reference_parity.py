"""Golden outputs of the authors' PyTorch networks, for parity tests of the Flax port.

Imports the public reference code (github saic-violet/bilayer-model) from a checkout whose path you pass;
nothing of it is copied here. For a set of flags and a seed it:
  1. builds the six reference networks, applies their spectral norm and runs a few training-mode passes so
     that BatchNorm running statistics and spectral-norm vectors are not at their initial values;
  2. writes a run folder like the authors' (args.txt, checkpoints/{epoch}_{network}.pth);
  3. runs the reference pipeline in eval mode (as its InferenceWrapper does: no masks applied to outputs,
     enhancer on) on random inputs and saves inputs and outputs to an .npz (NHWC, our names).

  python -m tools.reference_parity --reference /path/to/bilayer-model --out DIR --size tiny --seed 3 \
      [--set inf_num_channels=8 ...] [--no-spectral-norm texture_enhancer]

tests/test_parity.py uses the committed fixtures and, when BILAYER_REFERENCE is set, makes fresh ones.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import pathlib
import sys

import numpy as np

from bilayer_jax import config as config_lib
from bilayer_jax.config import REFERENCE_NETWORKS


@contextlib.contextmanager
def reference_on_path(reference_dir):
  reference_dir = str(pathlib.Path(reference_dir).resolve())
  saved = {k: v for k, v in sys.modules.items() if k.split('.')[0] in ('networks', 'runners', 'datasets')}
  for k in saved:
    del sys.modules[k]
  sys.path.insert(0, reference_dir)
  try:
    yield
  finally:
    sys.path.remove(reference_dir)
    for k in [k for k in sys.modules if k.split('.')[0] in ('networks', 'runners', 'datasets')]:
      del sys.modules[k]
    sys.modules.update(saved)


def reference_args(flags: dict):
  """The reference's argparse defaults for the networks, overridden by `flags`."""
  parser = argparse.ArgumentParser(conflict_handler='resolve')
  parser.add = parser.add_argument
  for name in REFERENCE_NETWORKS:
    importlib.import_module(f'networks.{name}').NetworkWrapper.get_args(parser)
  args = parser.parse_args([])
  general = dict(image_size=256, eps=1e-7, num_source_frames=1, num_target_frames=1, num_keypoints=68,
                 stickmen_thickness=2, folder_postfix='2d', inf_pred_source_data=True, inf_calc_grad=False,
                 pse_emb_source_pose=True, pse_in_channels=136, inf_apply_masks=True, enh_apply_masks=True)
  for k, v in {**general, **flags}.items():
    setattr(args, k, v)
  return args


def _random_inputs(rng, b, n, t, size):
  def imgs(k):
    return rng.uniform(-1, 1, (b, k, 3, size, size)).astype(np.float32)

  def segs(k):
    m = rng.uniform(0, 1, (b, k, 1, size // 4, size // 4)).astype(np.float32)
    return np.repeat(np.repeat(m, 4, axis=3), 4, axis=4)

  def poses(k):
    return rng.uniform(-0.9, 0.9, (b, k, 136)).astype(np.float32)

  return dict(source_imgs=imgs(n), source_segs=segs(n), source_poses=poses(n),
              target_imgs=imgs(t), target_segs=segs(t), target_poses=poses(t))


def make_reference_run(reference_dir, run_dir, flags: dict, seed: int, epoch: int = 1,
                       no_spectral_norm=(), warmup_steps: int = 2, num_identities: int = 2, num_targets: int = 2,
                       bn_momentum: float | None = None, warmup_batches=None):
  """Write a reference run folder and return golden eval outputs (a dict of NHWC numpy arrays).

  bn_momentum: None keeps PyTorch's 0.1, so the running statistics stay near their init (mean 0, var 1);
  1.0 is what the authors' runner sets for training (its --bn_momentum default): the statistics are then
  the last warm-up batch's, as in their checkpoints (their standing-statistics pass changes nothing: bug B9
  of docs/model.md), and a deep layer's variance can be far from 1.
  warmup_batches: the warm-up's input batches (dicts as _random_inputs makes them, any batch size), one
  training-mode pass each, instead of `warmup_steps` batches of 2 random images and poses.
  """
  import torch

  run_dir = pathlib.Path(run_dir)
  (run_dir / 'checkpoints').mkdir(parents=True, exist_ok=True)
  with reference_on_path(reference_dir):
    rn_utils = importlib.import_module('runners.utils')
    ds_utils = importlib.import_module('datasets.utils')
    args = reference_args(flags)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    nets = {name: importlib.import_module(f'networks.{name}').NetworkWrapper(args) for name in REFERENCE_NETWORKS}
    for name, net in nets.items():
      if name not in no_spectral_norm:
        net.apply(lambda m: rn_utils.spectral_norm(m, apply_to=['conv2d', 'linear'], eps=args.eps))
      if bn_momentum is not None:
        for module in net.modules():
          if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = bn_momentum
    size = args.image_size

    def to_torch(d):
      return {k: torch.from_numpy(v) for k, v in d.items()}

    def with_stickmen(d, b, n, t):
      d['source_stickmen'] = ds_utils.draw_stickmen(args, d['source_poses'].view(b * n, -1)).view(b, n, 3, size, size)
      d['target_stickmen'] = ds_utils.draw_stickmen(args, d['target_poses'].view(b * t, -1)).view(b, t, 3, size, size)
      return d

    # Training-mode passes: running statistics and power-iteration vectors move away from their init.
    names = list(REFERENCE_NETWORKS)
    if warmup_batches is None:
      warmup_batches = [_random_inputs(rng, 2, 1, 1, size) for _ in range(warmup_steps)]
    for raw in warmup_batches:
      for net in nets.values():
        net.train()
      b, n = raw['source_poses'].shape[:2]
      data = with_stickmen(to_torch(raw), b, n, raw['target_poses'].shape[1])
      for name in names:
        data = nets[name](data, names, nets)

    for name, net in nets.items():
      torch.save(net.state_dict(), run_dir / 'checkpoints' / f'{epoch}_{name}.pth')
    spn = ', '.join(n for n in REFERENCE_NETWORKS if n not in no_spectral_norm)
    with open(run_dir / 'args.txt', 'wt') as f:
      for k, v in sorted({**vars(args), 'spn_networks': spn}.items()):
        f.write(f'{k}: {v}\n')

    # Eval pass as the reference's InferenceWrapper runs it.
    for net in nets.values():
      net.eval()
    args.inf_apply_masks = False
    args.enh_apply_masks = False
    golden = {}
    b = num_identities
    raw = _random_inputs(rng, b, 1, 1, size)
    data = with_stickmen(to_torch(raw), b, 1, 1)
    with torch.no_grad():
      for name in ('identity_embedder', 'texture_generator', 'keypoints_embedder', 'inference_generator'):
        data = nets[name](data, [], nets)
    data = nets['texture_enhancer'](data, [], nets)
    for k, v in raw.items():
      golden[f'input/{k}'] = v
    golden['input/source_stickmen'] = data['source_stickmen'].numpy()
    for i, e in enumerate(data['source_idt_embeds']):
      golden[f'embedding_{i}'] = e.numpy()
    for key in ('pred_tex_hf_rgbs', 'target_pose_embeds', 'pred_target_uvs', 'pred_target_delta_lf_rgbs',
                'pred_target_delta_hf_rgbs', 'pred_target_imgs', 'pred_target_segs', 'pred_enh_tex_hf_rgbs',
                'pred_enh_target_imgs'):
      golden[key] = data[key].detach().numpy()

    # Several target frames per identity, no enhancer (render path with T > 1).
    args.pse_emb_source_pose = False
    args.inf_pred_source_data = False
    raw = _random_inputs(rng, 1, 1, num_targets, size)
    data = with_stickmen(to_torch(raw), 1, 1, num_targets)
    with torch.no_grad():
      for name in ('identity_embedder', 'texture_generator', 'keypoints_embedder', 'inference_generator'):
        data = nets[name](data, [], nets)
    for k, v in raw.items():
      golden[f'multi/input/{k}'] = v
    for key in ('pred_target_imgs', 'pred_target_segs', 'pred_target_delta_lf_rgbs'):
      golden[f'multi/{key}'] = data[key].numpy()

    # Discriminator on real images + stickmen, eval mode.
    dis_in = torch.cat([data['target_imgs'][0], data['target_stickmen'][0]], 1)
    with torch.no_grad():
      scores, feats = nets['discriminator'].net(dis_in)
    golden['dis/input'] = dis_in.numpy()
    golden['dis/scores'] = scores.numpy()
    for i, f in enumerate(feats):
      golden[f'dis/feature_{i}'] = f.numpy()
  return {k: v if _not_image(k) else np.moveaxis(v, -3, -1) for k, v in golden.items()}


def _not_image(key: str) -> bool:
  """Keypoint vectors and uv grids (already channels-last) stay as they are; the rest is (..., C, H, W)."""
  return key.endswith('poses') or key.endswith('uvs')


def _parse_set(items):
  out = {}
  for item in items or ():
    k, v = item.split('=', 1)
    for cast in (int, float):
      try:
        v = cast(v)
        break
      except ValueError:
        pass
    else:
      v = {'True': True, 'False': False}.get(v, v)
    out[k] = v
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--reference', required=True, help='checkout of saic-violet/bilayer-model')
  p.add_argument('--out', required=True, help='folder for the run (run/) and golden.npz')
  p.add_argument('--size', default='tiny', choices=config_lib.SIZES)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--set', nargs='*', help='extra reference flags, name=value')
  p.add_argument('--no-spectral-norm', nargs='*', default=(), help='reference networks without spectral norm')
  a = p.parse_args(argv)
  flags = {**config_lib.flags_of(a.size), **_parse_set(a.set)}
  out = pathlib.Path(a.out)
  golden = make_reference_run(a.reference, out / 'run', flags, a.seed, no_spectral_norm=tuple(a.no_spectral_norm))
  np.savez_compressed(out / 'golden.npz', **golden)
  print(f'wrote {out / "run"} and {out / "golden.npz"} ({len(golden)} arrays)')


if __name__ == '__main__':
  main()


def compare(run_dir, golden: dict) -> dict[str, float]:
  """Import the run with bilayer_jax and return the max abs difference to each golden output."""
  import jax.numpy as jnp

  import bilayer_jax
  from bilayer_jax import model as model_lib
  from bilayer_jax.avatar.identity_embedder import embedder_inputs
  from data_pipelines.faces.stickman import draw_stickmen
  from bilayer_jax.interop import torch_checkpoint

  config, variables = torch_checkpoint.import_run(run_dir)
  model = bilayer_jax.Bilayer(config, variables)
  nets = model.networks
  diffs = {}

  def diff(name, ours, theirs):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    if ours.shape != theirs.shape:
      raise AssertionError(f'{name}: shape {ours.shape} vs reference {theirs.shape}')
    diffs[name] = float(np.max(np.abs(ours - theirs)))

  g = golden
  image = g['input/source_imgs'][:, 0]
  mask = g['input/source_segs'][:, 0]
  keypoints = g['input/source_poses'][:, 0].reshape(-1, 68, 2)
  stickman = draw_stickmen(keypoints, config.image_size)
  diff('stickman', stickman, g['input/source_stickmen'][:, 0])

  # Network by network, each from the reference's own inputs.
  emb_in = embedder_inputs(jnp.asarray(image), jnp.asarray(stickman), jnp.asarray(mask))
  embeddings = nets['identity_embedder'].apply(variables['identity_embedder'], emb_in)
  for i, e in enumerate(embeddings):
    diff(f'identity_embedder/embedding_{i}', e, g[f'embedding_{i}'])
  ref_embeddings = [jnp.asarray(g[f'embedding_{i}']) for i in range(len(embeddings))]
  tex_groups = nets['texture_projector'].apply(variables['texture_projector'], ref_embeddings)
  inf_groups = nets['inference_projector'].apply(variables['inference_projector'], ref_embeddings)
  from bilayer_jax.avatar.projectors import generator_adaptive_params
  tex_adaptive = generator_adaptive_params(tex_groups, config.tex_norm_layer_type)
  inf_adaptive = generator_adaptive_params(inf_groups, config.inf_norm_layer_type)
  texture = nets['texture_generator'].apply(variables['texture_generator'], tex_adaptive)
  diff('texture_generator/texture', texture, g['pred_tex_hf_rgbs'][:, 0])
  poses = g['input/target_poses'].reshape(-1, 136)
  pose_embedding = nets['keypoints_embedder'].apply(variables['keypoints_embedder'], jnp.asarray(poses))
  diff('keypoints_embedder/pose_embedding', pose_embedding, g['target_pose_embeds'].reshape(pose_embedding.shape))
  frame, _ = model_lib.frame_outputs(config, nets, variables, jnp.asarray(g['pred_tex_hf_rgbs'][:, 0]),
                                     inf_adaptive, jnp.asarray(poses))
  diff('inference_generator/uv', frame['uv'], g['pred_target_uvs'][:, 0])
  diff('inference_generator/low_freq', frame['low_freq'], g['pred_target_delta_lf_rgbs'][:, 0])
  diff('inference_generator/high_freq', frame['high_freq'], g['pred_target_delta_hf_rgbs'][:, 0])
  diff('inference_generator/mask', frame['mask'], g['pred_target_segs'][:, 0])
  scores, feats = nets['discriminator'].apply(variables['discriminator'], jnp.asarray(g['dis/input']))
  diff('discriminator/scores', scores, g['dis/scores'])
  for i, f in enumerate(feats):
    diff(f'discriminator/feature_{i}', f, g[f'dis/feature_{i}'])

  # End to end through the public API, with our own stickman.
  avatar = model.create_avatar(image, keypoints, mask, enhance=True)
  diff('api/enhanced_texture', avatar.texture, g['pred_enh_tex_hf_rgbs'][:, 0])
  out = model.render(avatar, g['input/target_poses'].reshape(image.shape[0], -1, 68, 2))
  diff('api/image', out['image'][:, 0], g['pred_enh_target_imgs'][:, 0])
  diff('api/mask', out['mask'][:, 0], g['pred_target_segs'][:, 0])
  avatar = model.create_avatar(image, keypoints, mask, enhance=False)
  out = model.render(avatar, g['input/target_poses'].reshape(image.shape[0], -1, 68, 2))
  diff('api/image_without_enhancer', out['image'][:, 0], g['pred_target_imgs'][:, 0])

  # Several frames of one identity.
  m_image = g['multi/input/source_imgs'][0, 0]
  avatar = model.create_avatar(m_image, g['multi/input/source_poses'][0, 0].reshape(68, 2),
                               g['multi/input/source_segs'][0, 0], enhance=False)
  out = model.render(avatar, g['multi/input/target_poses'][0].reshape(-1, 68, 2))
  diff('api/multi_frame_image', out['image'], g['multi/pred_target_imgs'][0])
  diff('api/multi_frame_low_freq', out['low_freq'], g['multi/pred_target_delta_lf_rgbs'][0])
  return diffs


# ------------------------------------------------------------------------------------------------------
# Timed paths for the benchmarks (benchmarks/render_latency.py, benchmarks/train_step.py). Everything that
# touches the reference's internals stays in this file.


def reference_frame_path(reference_dir, flags: dict, embedding_channels, poses, seed: int = 0):
  """The reference's per-frame path (keypoints MLP, inference generator, grid sample) for one random avatar.

  Returns a function of no arguments that renders `poses` (1, 136) and returns (image, mask).
  """
  import importlib

  import torch
  import torch.nn.functional as F

  torch.manual_seed(seed)
  flags = {**flags, 'pse_emb_source_pose': False, 'inf_pred_source_data': False, 'inf_apply_masks': False}
  with reference_on_path(reference_dir):
    args = reference_args(flags)
    pose_net = importlib.import_module('networks.keypoints_embedder').NetworkWrapper(args).eval()
    frame_net = importlib.import_module('networks.inference_generator').NetworkWrapper(args).eval()
    s = args.emb_output_tensor_size
    with torch.no_grad():  # once per avatar: adaptive parameters from random identity embeddings
      weights, biases = frame_net.prj_inf([torch.randn(1, c, s, s) for c in embedding_channels])
      frame_net.assign_adaptive_params(frame_net.gen_inf, weights, biases)
  texture = torch.rand(1, 3, args.image_size, args.image_size) * 2 - 1
  poses = torch.as_tensor(poses, dtype=torch.float32).view(1, 1, -1)

  def render():
    with torch.inference_mode():
      embedding = pose_net({'target_poses': poses}, [], {})['target_pose_embeds'][:, 0]
      delta_uv, low_freq, mask_logits = frame_net.gen_inf(embedding)
      uv = frame_net.identity_grid + delta_uv.permute(0, 2, 3, 1)
      return low_freq + F.grid_sample(texture, uv, align_corners=False), torch.sigmoid(mask_logits)

  return render


def reference_training_step(reference_dir, flags: dict, batch: int, seed: int = 0, device: str = 'cpu',
                            autocast: bool = False):
  """One stage-1 training step of the reference networks without perceptual losses, with the update the
  authors intended (D learns from D_ADV on detached fakes, G from its terms with D held fixed). Returns a
  function of no arguments that runs one step on a fixed random batch."""
  import importlib

  import torch

  names = ('identity_embedder', 'texture_generator', 'keypoints_embedder', 'inference_generator', 'discriminator')
  torch.manual_seed(seed)
  with reference_on_path(reference_dir):
    rn_utils = importlib.import_module('runners.utils')
    ds_utils = importlib.import_module('datasets.utils')
    args = reference_args({**flags, 'pse_emb_source_pose': False, 'inf_pred_source_data': False})
    nets = {n: importlib.import_module(f'networks.{n}').NetworkWrapper(args) for n in names}
    for net in nets.values():
      net.apply(lambda m: rn_utils.spectral_norm(m, apply_to=['conv2d', 'linear'], eps=args.eps))
      net.train()
      net.to(device)
    draw = lambda poses, k: ds_utils.draw_stickmen(args, poses.view(batch * k, -1)).view(
        batch, k, 3, args.image_size, args.image_size)
  optimizers = {n: torch.optim.Adam(nets[n].parameters(), lr=2e-4, betas=(0.5, 0.999), eps=1e-7) for n in names}
  raw = _random_inputs(np.random.default_rng(seed), batch, 1, 1, args.image_size)
  critic = nets['discriminator'].net

  inputs = {k: torch.from_numpy(v) for k, v in raw.items()}
  inputs['source_stickmen'] = draw(inputs['source_poses'], 1)
  inputs['target_stickmen'] = draw(inputs['target_poses'], 1)
  inputs = {k: v.to(device) for k, v in inputs.items()}
  scaler = torch.amp.GradScaler(device, enabled=autocast)

  def step():
    with torch.autocast(device, dtype=torch.float16, enabled=autocast):
      d_adv, g_terms = losses()
    for o in optimizers.values():
      o.zero_grad()
    scaler.scale(d_adv + g_terms).backward()
    for o in optimizers.values():
      scaler.step(o)
    scaler.update()

  def losses():
    d = dict(inputs)
    for n in names[:-1]:
      d = nets[n](d, list(names), nets)
    real = torch.cat([d['target_imgs'], d['target_stickmen']], 2).flatten(0, 1)
    fake = torch.cat([d['pred_target_imgs'], d['target_stickmen']], 2).flatten(0, 1)
    r, f = critic(torch.cat([real, fake.detach()]))[0].split(batch)
    d_adv = 0.5 * (torch.relu(1 - (r - f.mean())).mean() + torch.relu(1 + (f - r.mean())).mean())
    for p in critic.parameters():
      p.requires_grad_(False)
    scores, feats = critic(torch.cat([real, fake]))
    for p in critic.parameters():
      p.requires_grad_(True)
    rg, fg = r.detach(), scores.split(batch)[1]
    g_adv = 0.5 * (torch.relu(1 - (fg - rg.mean())).mean() + torch.relu(1 + (rg - fg.mean())).mean())
    fm = 10 * sum((a.split(batch)[1] - a.split(batch)[0].detach()).abs().mean() for a in feats) / len(feats)
    l1 = 10 * (d['pred_target_delta_lf_rgbs'] - d['target_imgs']).abs().mean()
    bce = 10 * torch.nn.functional.binary_cross_entropy_with_logits(d['pred_target_segs_logits'], d['target_segs'])
    return d_adv, g_adv + fm + l1 + bce

  return step

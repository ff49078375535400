"""One stage-1 training step of the authors' code against ours, from the same weights and the same batch.

The authors' side is their own runner (`runners/default.py` of github saic-violet/bilayer-model, imported from
a checkout whose path you pass; nothing of it is copied here) with the flags of their stage-1 script
(`scripts/train_base_model_8gpus.sh`, parsed by their own argument parsers, so the store_true quirk B4 is what
it was), the sizes of `--size`, one process (no SyncBN), every loss term of the script (adversarial, feature
matching, VGG19 + VGGFace perceptual, pixelwise L1, segmentation BCE, warping regularizer at weight 0). The
two perceptual networks get the same random weights on both sides (a stand-in for torchvision's VGG
builders: no download). The authors' networks are built by their runner, spectral norm and all, and given a
few training-mode passes, so BatchNorm running statistics and power-iteration vectors are not at their
initial values; the run folder they write is imported with our importer (`import_run`).

Then both sides take one step on a fresh batch:
  - every loss term (relative error);
  - every network's gradient, tensor by tensor: max |ours - theirs| / max |theirs|;
  - every parameter after one Adam step per network (lr 2e-4, betas (0.5, 0.999), eps 1e-7), the
    BatchNorm running statistics (momentum 1, unbiased variance) and spectral-norm vectors u, v.
The discriminator's gradient is the one the authors meant (docs/model.md bug B1): their D switches its parameters'
requires_grad off at the end of its forward, so the published backward gives D nothing; here the flag is
switched back on before their backward, which then gives D exactly dD_ADV/dD (the "gen" pass ran with the
flag off and has no edge to D).

Some gradients are zero in exact arithmetic (biases of convolutions that feed a batch-statistics BatchNorm,
docs/model.md Q7; the bias of D's score head, which the relativistic loss cancels) and carry only round-off on both
sides. A tensor whose reference gradient is below 1e-4 of its network's largest is measured against that
largest gradient (max |ours - theirs| / network max <= 1e-4); after Adam, which divides by the gradient's
magnitude and so turns round-off into steps of up to lr, such tensors must agree to 2 lr. They are counted
in the output. Weights that get no gradient at all in the reference (docs/model.md Q8) must get exactly zero here.

  python -m tools.reference_train_parity --reference /path/to/bilayer-model --size tiny --seed 3
  python -m tools.reference_train_parity --reference PATH --size small --seed 1 --batch 2
  python -m tools.reference_train_parity --reference PATH --size micro --seed 0 --write-fixture DIR

Exit status 0 when every error is within the bound (1e-4), 1 otherwise. tests/test_train_parity.py checks a
committed fixture written by --write-fixture (our side only: no checkout needed).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import pathlib
import shlex
import sys
import tempfile
import types

import numpy as np

from bilayer_jax import config as config_lib
from tools import reference_parity

BOUND = 1e-4
SCRIPT = 'scripts/train_base_model_8gpus.sh'
STAGE1_NETWORKS = ('identity_embedder', 'texture_generator', 'keypoints_embedder', 'inference_generator',
                   'discriminator')
# A tensor whose reference gradient is below this fraction of its network's largest gradient is compared
# against that largest gradient instead of its own (see the module docstring).
NEAR_ZERO = 1e-4
LEARNING_RATE = 2e-4
# The perceptual networks as the script names them: (reference name, our name, depth, layers, weight).
PERCEPTUAL = (('vgg19_imagenet_pytorch', 'VGG19', 19, (1, 6, 11, 20, 29), 10.0),
              ('vgg16_face_caffe', 'VGGFace', 16, (1, 6, 11, 18, 25), 0.01))
# train.py's general options that the runner, its networks and losses read (train.py itself imports the
# data loader, which does not compile: docs/model.md B2).
GENERAL = dict(project_dir='.', num_gpus=0, rank=0, world_size=1, local_rank=0, batch_size=2, random_seed=0,
               use_half=False, use_apex=False, amp_opt_level='O0', debug=False)


# ------------------------------------------------------------------------------------------------------
# Inputs shared by both sides


def random_vgg_state(depth: int, seed: int) -> dict[str, np.ndarray]:
  """torchvision-layout VGG `features` weights, He-normal (activations keep their scale through 16 convs)."""
  from bilayer_jax.losses import vgg

  rng = np.random.default_rng([seed, depth])
  state = {}
  for i, (kind, *channels) in enumerate(vgg.feature_layout(depth)):
    if kind == 'conv':
      cin, cout = channels
      state[f'features.{i}.weight'] = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (9 * cin))).astype(np.float32)
      state[f'features.{i}.bias'] = rng.uniform(-0.05, 0.05, cout).astype(np.float32)
  return state


def random_batch(seed: int, batch: int, size: int) -> dict[str, np.ndarray]:
  """The authors' batch layout: images (b, 1, 3, S, S) in [-1, 1], soft masks, poses (b, 1, 136)."""
  return reference_parity._random_inputs(np.random.default_rng([seed, 1]), batch, 1, 1, size)


def our_batch(reference_batch: dict) -> dict[str, np.ndarray]:
  """The same batch in our layout (NHWC, keypoints (b, 1, 68, 2)); stickmen as the reference drew them."""
  out = {}
  for side in ('source', 'target'):
    out[f'{side}_image'] = np.moveaxis(reference_batch[f'{side}_imgs'], 2, -1)
    out[f'{side}_mask'] = np.moveaxis(reference_batch[f'{side}_segs'], 2, -1)
    out[f'{side}_stickman'] = np.moveaxis(reference_batch[f'{side}_stickmen'], 2, -1)
    poses = reference_batch[f'{side}_poses']
    out[f'{side}_keypoints'] = poses.reshape(poses.shape[:2] + (-1, 2))
  return out


# ------------------------------------------------------------------------------------------------------
# The authors' side


@contextlib.contextmanager
def torchvision_standin(weights: dict[int, dict[str, np.ndarray]]):
  """`torchvision.models.vgg16/vgg19` as the reference's perceptual loss calls them, built in torchvision's
  layer layout, `pretrained=True` loading `weights[depth]` instead of downloading."""
  import torch

  from bilayer_jax.losses import vgg

  def builder(depth):
    def build(pretrained: bool = False):
      layers = []
      for kind, *channels in vgg.feature_layout(depth):
        if kind == 'conv':
          layers.append(torch.nn.Conv2d(channels[0], channels[1], 3, padding=1))
        elif kind == 'relu':
          layers.append(torch.nn.ReLU(inplace=True))
        else:
          layers.append(torch.nn.MaxPool2d(2, 2))
      net = torch.nn.Module()
      net.features = torch.nn.Sequential(*layers)
      net.classifier = torch.nn.Sequential()
      if pretrained:
        net.load_state_dict({k: torch.from_numpy(v) for k, v in weights[depth].items()})
      return net
    return build

  models = types.ModuleType('torchvision.models')
  models.vgg16, models.vgg19 = builder(16), builder(19)
  package = types.ModuleType('torchvision')
  package.models = models
  saved = {k: sys.modules.get(k) for k in ('torchvision', 'torchvision.models')}
  sys.modules.update({'torchvision': package, 'torchvision.models': models})
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


@contextlib.contextmanager
def onednn(enabled: bool):
  """torch's oneDNN (mkldnn) CPU kernels on or off. Off by default: on this machine oneDNN's float32
  convolution gradients differ from float64 by about 5e-4 of their largest value (VGG19 at 64x64), torch's
  own float32 kernels by 2e-7 and ours by 6e-7, so with oneDNN the comparison would measure oneDNN."""
  import torch

  saved = torch.backends.mkldnn.enabled
  torch.backends.mkldnn.enabled = enabled
  try:
    yield
  finally:
    torch.backends.mkldnn.enabled = saved


@contextlib.contextmanager
def apex_standin():
  """`apex.parallel.SyncBatchNorm`, which the runner's BatchNorm-momentum helper imports even in one process
  (docs/model.md B8) only to test isinstance against; one process has no SyncBatchNorm, so a class that nothing is
  an instance of gives their helper its one-process behaviour."""
  if importlib.util.find_spec('apex') is not None:
    yield
    return
  parallel = types.ModuleType('apex.parallel')
  parallel.SyncBatchNorm = type('SyncBatchNorm', (), {})
  package = types.ModuleType('apex')
  package.parallel = parallel
  sys.modules.update({'apex': package, 'apex.parallel': parallel})
  try:
    yield
  finally:
    sys.modules.pop('apex', None)
    sys.modules.pop('apex.parallel', None)


@contextlib.contextmanager
def _argv(args):
  saved = sys.argv
  sys.argv = [saved[0]] + list(args)
  try:
    yield
  finally:
    sys.argv = saved


def script_tokens(reference_dir) -> list[str]:
  """The argument list of the authors' stage-1 script (the dataset path it leaves as a TODO dropped)."""
  text = (pathlib.Path(reference_dir) / SCRIPT).read_text().replace('\\\n', ' ')
  line = next(l for l in text.splitlines() if 'train.py' in l)
  tokens = shlex.split(line.split('train.py', 1)[1])
  out, skip = [], False
  for t in tokens:
    if t.startswith('--'):
      skip = t == '--data_root'
    if not skip:
      out.append(t)
  return out


def reference_runner_args(reference_dir, size_flags: dict, project_dir, batch: int):
  """The script's flags, parsed by the authors' parsers, then the size and a one-process setup."""
  runner_module = importlib.import_module('runners.default')
  parser = argparse.ArgumentParser(conflict_handler='resolve')
  parser.add = parser.add_argument
  for name, default in GENERAL.items():
    if isinstance(default, bool):
      parser.add(f'--{name}', action='store_true')
    else:
      parser.add(f'--{name}', default=default, type=type(default))
  # losses_test would build LPIPS and ArcFace (their files download, and they are not part of a training step).
  tokens = script_tokens(reference_dir) + ['--losses_test', 'adversarial']
  with _argv(tokens):  # the runner's get_args reads sys.argv to choose which networks' flags to add
    runner_module.RunnerWrapper.get_args(parser)
  args, _ = parser.parse_known_args(tokens)
  # One process: their BatchNorm is plain BatchNorm2d over the local batch.
  overrides = dict(GENERAL, project_dir=str(project_dir), batch_size=batch,
                   num_source_frames=1, num_target_frames=1, num_keypoints=68, stickmen_thickness=2,
                   folder_postfix='2d')
  for k, v in {**overrides, **size_flags}.items():
    setattr(args, k, v)
  return args


def _stickmen(ds_utils, args, data):
  size = args.image_size
  for side in ('source', 'target'):
    poses = data[f'{side}_poses']
    b, n = poses.shape[:2]
    data[f'{side}_stickmen'] = ds_utils.draw_stickmen(args, poses.view(b * n, -1)).view(b, n, 3, size, size)
  return data


def reference_step(reference_dir, run_dir, size: str, seed: int, batch: int, warmup_steps: int = 2,
                   use_onednn: bool = False, float64: bool = True) -> dict:
  """Build the authors' runner, warm it up, write its run folder to run_dir, take one step.

  Returns {'batch': the step's inputs (reference layout, stickmen included), 'losses': {term: value},
  'grads': {network: {key: array}}, 'after': {network: state dict after the step}, 'd_grads_as_published':
  number of D tensors that got a gradient from the backward as published}.
  """
  import torch

  run_dir = pathlib.Path(run_dir)
  (run_dir / 'checkpoints').mkdir(parents=True, exist_ok=True)
  vgg_weights = {depth: random_vgg_state(depth, seed) for _, _, depth, _, _ in PERCEPTUAL}
  with tempfile.TemporaryDirectory() as project_dir, onednn(use_onednn), reference_parity.reference_on_path(reference_dir), \
      torchvision_standin(vgg_weights), apex_standin():
    perceptual_dir = pathlib.Path(project_dir) / 'pretrained_weights' / 'perceptual'
    perceptual_dir.mkdir(parents=True)
    torch.save({k: torch.from_numpy(v) for k, v in vgg_weights[16].items()}, perceptual_dir / 'vgg16_face_caffe.pth')
    sys.modules.pop('losses', None)
    for k in [k for k in sys.modules if k.startswith('losses.')]:
      del sys.modules[k]
    ds_utils = importlib.import_module('datasets.utils')
    args = reference_runner_args(reference_dir, config_lib.flags_of(size), project_dir, batch)
    torch.manual_seed(seed)
    runner = importlib.import_module('runners.default').RunnerWrapper(args, training=True)
    runner.train()
    critic = runner.nets['discriminator']

    def to_torch(d):
      return _stickmen(ds_utils, args, {k: torch.from_numpy(v) for k, v in d.items()})

    rng = np.random.default_rng([seed, 0])
    with torch.no_grad():
      for _ in range(warmup_steps):
        runner(to_torch(reference_parity._random_inputs(rng, batch, 1, 1, args.image_size)))
    runner.losses_history[True] = {}
    for name in STAGE1_NETWORKS:
      torch.save(runner.nets[name].state_dict(), run_dir / 'checkpoints' / f'1_{name}.pth')
    with open(run_dir / 'args.txt', 'wt') as f:
      for k, v in sorted(vars(args).items()):
        f.write(f'{k}: {v}\n')

    data = to_torch(random_batch(seed, batch, args.image_size))
    if float64:  # the checkpoint (float32) is what both sides start from; the step itself in float64
      runner.double()
      data = {k: v.double() for k, v in data.items()}
      embedder = runner.nets['keypoints_embedder']
      if hasattr(embedder, 'frequencies'):  # their float32 buffer holds pi rounded to float32
        embedder.frequencies = (np.pi * 2.0 ** torch.arange(args.pse_num_harmonics, dtype=torch.float64))[None, None]
      _perceptual_constants_in_float64(runner)
    optimizers = runner.get_optimizers(args)
    inputs = {k: v.numpy().copy() for k, v in data.items()}
    for opt in optimizers.values():
      opt.zero_grad(set_to_none=True)
    loss = runner(data)
    losses = {k: float(v[-1]) for k, v in runner.losses_history[True].items()}

    # As published, D's requires_grad is off when backward runs (docs/model.md B1): count what it would have received.
    published = sum(p.requires_grad for p in critic.parameters())
    for p in critic.parameters():
      p.requires_grad_(True)
    loss.backward()
    grads = {name: {k: p.grad.numpy().copy() for k, p in runner.nets[name].named_parameters() if p.grad is not None}
             for name in STAGE1_NETWORKS}
    for opt in optimizers.values():
      opt.step()
    after = {name: {k: v.numpy().copy() for k, v in runner.nets[name].state_dict().items()
                    if v.is_floating_point()} for name in STAGE1_NETWORKS}
  return dict(batch=inputs, losses=losses, grads=grads, after=after, d_grads_as_published=published)


def _perceptual_constants_in_float64(runner) -> None:
  """Their perceptual loss keeps its input normalization in float32 buffers (ImageNet mean and std, Caffe's
  BGR means over 127.5), which `double()` widens but does not make exact: a shift of about 1e-8 of the VGG
  inputs that moves the perceptual terms by 1e-8 and the gradients by up to 5e-7 of their largest value, and
  through Adam's division (eps 1e-7) a near-zero gradient entry's step by 0.2 lr. Set them to the same
  numbers in float64, as ours computes them."""
  import torch

  from bilayer_jax.losses import vgg

  exact = {'pytorch': ((2 * np.asarray(vgg.IMAGENET_MEAN) - 1), 2 * np.asarray(vgg.IMAGENET_STD)),
           'caffe': (np.asarray(vgg.CAFFE_BGR_MEAN) / 127.5 - 1, np.full(3, 1 / 127.5))}
  found = 0
  for loss in runner.losses.values():
    for name, buffer in list(loss.named_buffers()):
      kind = next((k for k in exact if name.endswith(f'_{k}_mean') or name.endswith(f'_{k}_std')), None)
      if kind is None:
        continue
      value = exact[kind][0 if name.endswith('_mean') else 1]
      module = loss.get_submodule(name.rpartition('.')[0]) if '.' in name else loss
      leaf = name.rpartition('.')[2]
      if not np.allclose(buffer.numpy().reshape(-1), value, rtol=1e-6):
        raise ValueError(f'the reference perceptual buffer {name} is {buffer.numpy().reshape(-1)}, not {value}')
      setattr(module, leaf, torch.from_numpy(value.reshape(1, 3, 1, 1)).to(buffer.dtype))
      found += 1
  if found != 4:
    raise ValueError(f'expected 4 perceptual normalization buffers in the reference (mean and std of two '
                     f'networks), found {found}')


# ------------------------------------------------------------------------------------------------------
# Our side


def our_training_config(model_config, vgg_files: dict[int, str], batch: int, loss_weights=None,
                        float64: bool = False):
  """The authors' recipe (training defaults) around an imported model config, with their perceptual nets."""
  from bilayer_jax.train.defaults import training_config

  config = training_config('tiny', stage='base')
  model = model_config.copy_and_resolve_references()
  model.upsample_mode, model.downsample_mode = config.model.upsample_mode, config.model.downsample_mode
  config.model = model
  config.training.batch_size = batch
  kinds = {19: 'torchvision_vgg19', 16: 'vggface'}
  config.training.perceptual = [dict(name=ours, weights=f'{kinds[depth]}:{vgg_files[depth]}', layers=layers,
                                     weight=weight) for _, ours, depth, layers, weight in PERCEPTUAL]
  for k, v in (loss_weights or {}).items():
    config.training.loss_weights[k] = v
  if float64:
    config.training.compute_dtype = 'float64'
  return config


def our_step(run_dir, batch: dict, seed: int, loss_weights=None, drop_terms=(), float64: bool = True) -> dict:
  """Import run_dir with our importer and take one step of our trainer on the reference-layout batch.

  loss_weights / drop_terms change our side only (to show that the comparison catches a wrong recipe).
  Returns {'losses', 'grads', 'after'} in our variable trees.
  """
  import jax

  if float64:  # process-wide: the tool runs in a process of its own (tests call it as a subprocess)
    jax.config.update('jax_enable_x64', True)
  from bilayer_jax import model as model_lib
  from bilayer_jax.interop import torch_checkpoint
  from bilayer_jax.losses import perceptual
  from bilayer_jax.train import step as step_lib

  model_config, variables = torch_checkpoint.import_run(run_dir)
  with tempfile.TemporaryDirectory() as tmp:
    files = {}
    for _, _, depth, _, _ in PERCEPTUAL:
      files[depth] = str(pathlib.Path(tmp) / f'vgg{depth}.npz')
      np.savez(files[depth], **random_vgg_state(depth, seed))
    config = our_training_config(model_config, files, next(iter(batch.values())).shape[0], loss_weights, float64)
    perceptual_fn = perceptual.make_perceptual_loss(config.training.perceptual)
  nets = model_lib.build_networks(config.model)
  loss_fn = step_lib.make_loss_fn(config, nets, perceptual_fn, None)
  if drop_terms:
    full_loss_fn = loss_fn

    def loss_fn(params, state, batch):  # noqa: F811  (the same loss without some terms)
      _, (losses, collections, health) = full_loss_fn(params, state, batch)
      losses = {k: v for k, v in losses.items() if k not in drop_terms}
      return sum(losses.values()), (losses, collections, health)

  dtype = np.float64 if float64 else np.float32
  variables = jax.tree_util.tree_map(lambda x: np.asarray(x, dtype), variables)
  batch = {k: np.asarray(v, dtype) for k, v in batch.items()}
  state = step_lib.init_state(config, variables, config.seed)
  params = {n: state.variables[n]['params'] for n in step_lib.trainable_networks(config)}
  ours = our_batch(batch)
  grads, (losses, collections, _) = jax.jit(jax.grad(loss_fn, has_aux=True))(params, state, ours)
  new_state, _ = jax.jit(step_lib.make_apply_gradients(config))(state, grads, collections)
  to_np = lambda t: jax.tree_util.tree_map(np.asarray, t)
  return dict(config=config.model, losses={k: float(v) for k, v in losses.items()}, grads=to_np(grads),
              after=to_np(new_state.variables))


# ------------------------------------------------------------------------------------------------------
# The comparison


def _relative(ours, theirs) -> float:
  scale = float(np.max(np.abs(theirs))) if theirs.size else 0.0
  diff = float(np.max(np.abs(ours - theirs))) if theirs.size else 0.0
  return diff / scale if scale > 0 else (0.0 if diff == 0 else float('inf'))


def compare(ours: dict, theirs: dict) -> list[dict]:
  """Rows {kind, name, error, ok, note}: one per loss term, per network's gradients, per network's state
  after the step. `error` is the worst relative error (per tensor: max abs difference / max abs value;
  for near-zero gradients, see NEAR_ZERO)."""
  from bilayer_jax.config import spectral_norm_networks
  from bilayer_jax.interop.torch_checkpoint import REFERENCE_FILES, convert, leaves_with_paths, torch_key

  config = ours['config']
  sn = spectral_norm_networks(config)
  rows = []
  for term, value in sorted(theirs['losses'].items()):
    mine = ours['losses'].get(term)
    if mine is None:
      rows.append(dict(kind='loss', name=term, error=float('inf'), ok=False, note=f'{value:.6g} vs missing'))
      continue
    error = abs(mine - value) / abs(value) if value else abs(mine)
    rows.append(dict(kind='loss', name=term, error=error, ok=error <= BOUND, note=f'{mine:.6g} vs {value:.6g}'))
  for term in sorted(set(ours['losses']) - set(theirs['losses'])):
    rows.append(dict(kind='loss', name=term, error=float('inf'), ok=False, note='not a term of the reference'))

  for ref_name in STAGE1_NETWORKS:
    networks = REFERENCE_FILES[ref_name]
    ref_grads, ref_after = theirs['grads'][ref_name], theirs['after'][ref_name]
    pairs, problems = [], []
    for network in networks:
      for path, g in leaves_with_paths(ours['grads'][network]):
        key, how = torch_key(network, 'params', path, config, network in sn)
        g = np.asarray(g)
        if key in ref_grads:
          pairs.append((key, g, convert(ref_grads[key], how)))
        elif np.any(g):  # their autograd gives no gradient to dead weights (docs/model.md Q8): ours must be zero
          problems.append(f'{key}: no gradient in the reference, ours {np.max(np.abs(g)):.2g}')
    scale = max(float(np.max(np.abs(t))) for _, _, t in pairs)
    near_zero, errors = [], {}
    for key, g, t in pairs:
      if np.max(np.abs(t)) < NEAR_ZERO * scale:
        near_zero.append(key)
        errors[key] = float(np.max(np.abs(g - t))) / scale
      else:
        errors[key] = _relative(g, t)
    worst = max(errors, key=errors.get)
    note = f'worst {worst}'
    if near_zero:
      note += f'; {len(near_zero)} near-zero tensors measured against the network\'s largest gradient'
    note += ''.join(f'; {p}' for p in problems)
    rows.append(dict(kind='gradient', name=ref_name, error=errors[worst], ok=errors[worst] <= BOUND and not problems,
                     note=note))

    errors, zero_moves, problems = {}, [], []
    for network in networks:
      for path, value in leaves_with_paths(ours['after'][network]):
        collection, rest = path[0], path[1:]
        key, how = torch_key(network, collection, rest, config, network in sn)
        if key not in ref_after:
          problems.append(f'{key} not in the reference')
          continue
        mine, their = np.asarray(value), convert(ref_after[key], how)
        if key in near_zero:  # Adam moves these by up to lr whatever their round-off is
          zero_moves.append(float(np.max(np.abs(mine - their))))
        else:
          errors[key] = _relative(mine, their)
    worst = max(errors, key=errors.get)
    note = f'worst {worst} (parameters, BatchNorm statistics, spectral vectors)'
    if zero_moves:
      note += f'; near-zero-gradient tensors differ by <= {max(zero_moves):.2g} (bound: 2 lr)'
      if max(zero_moves) > 2 * LEARNING_RATE:
        problems.append('a near-zero-gradient tensor moved by more than 2 lr')
    note += ''.join(f'; {p}' for p in problems)
    rows.append(dict(kind='after Adam', name=ref_name, error=errors[worst],
                     ok=errors[worst] <= BOUND and not problems, note=note))
  return rows


def format_rows(rows) -> str:
  lines = [f'{"what":12s} {"name":22s} {"error":>10s}  {"":4s} detail']
  for r in rows:
    lines.append(f'{r["kind"]:12s} {r["name"]:22s} {r["error"]:10.2e}  {"ok" if r["ok"] else "FAIL":4s} {r["note"]}')
  failed = [r for r in rows if not r['ok']]
  worst = max(rows, key=lambda r: r['error'])
  lines.append(f'summary: {len(rows) - len(failed)}/{len(rows)} within {BOUND:g}; worst {worst["kind"]} '
               f'{worst["name"]} {worst["error"]:.2e}' + ('' if not failed else '; FAILED: '
               + ', '.join(f'{r["kind"]} {r["name"]}' for r in failed)))
  return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------------
# Fixtures (the CI test compares our side with a committed reference step)


def write_fixture(out, run_dir, size, seed, theirs, float64: bool) -> None:
  import shutil

  out = pathlib.Path(out)
  if out.exists():
    raise SystemExit(f'{out} exists; remove it first')
  shutil.copytree(run_dir, out / 'run')
  np.savez_compressed(out / 'batch.npz', **theirs['batch'])
  arrays = {}
  for kind in ('grads', 'after'):
    for net, state in theirs[kind].items():
      for k, v in state.items():
        arrays[f'{kind}/{net}/{k}'] = v.astype(np.float32)  # float32 rounding (6e-8) is far below the bound
  np.savez_compressed(out / 'reference.npz', **arrays)
  (out / 'meta.json').write_text(json.dumps(dict(size=size, seed=seed, float64=float64, losses=theirs['losses'],
                                                 d_grads_as_published=theirs['d_grads_as_published']),
                                            indent=2, sort_keys=True) + '\n')


def read_fixture(folder) -> dict:
  folder = pathlib.Path(folder)
  meta = json.loads((folder / 'meta.json').read_text())
  theirs = dict(losses=meta['losses'], grads={}, after={})
  with np.load(folder / 'reference.npz') as f:
    for name in f.files:
      kind, net, key = name.split('/', 2)
      theirs[kind].setdefault(net, {})[key] = f[name]
  with np.load(folder / 'batch.npz') as f:
    batch = dict(f)
  return dict(meta=meta, theirs=theirs, batch=batch, run=folder / 'run')


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--reference', help='checkout of saic-violet/bilayer-model')
  p.add_argument('--fixture', help='compare with a fixture written by --write-fixture instead (no checkout)')
  p.add_argument('--size', default='tiny', choices=config_lib.SIZES)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--batch', type=int, default=2, help='identities per step (one source and one target each)')
  p.add_argument('--write-fixture', metavar='DIR', help='also write the reference step as a test fixture')
  p.add_argument('--float32', action='store_true', help='take the step in float32 on both sides (see FLOAT64)')
  p.add_argument('--drop', nargs='*', default=(), help='leave these loss terms out of our side (a check that '
                 'the comparison fails)')
  p.add_argument('--weight', nargs='*', default=(), help='NAME=VALUE: a loss weight of our side (a check that '
                 'the comparison fails), e.g. adversarial=0.6')
  p.add_argument('--onednn', action='store_true', help="run the reference on torch's oneDNN CPU kernels "
                 '(less precise float32 convolution gradients; see onednn())')
  a = p.parse_args(argv)
  if bool(a.reference) == bool(a.fixture):
    p.error('give --reference PATH or --fixture DIR')
  weights = {k: float(v) for k, v in (w.split('=', 1) for w in a.weight)}
  if a.fixture:
    fixture = read_fixture(a.fixture)
    meta = fixture['meta']
    print(f'fixture {a.fixture}: size {meta["size"]}, seed {meta["seed"]}')
    rows = compare(our_step(fixture['run'], fixture['batch'], meta['seed'], weights, a.drop,
                            meta.get('float64', True)), fixture['theirs'])
    print(format_rows(rows))
    return 0 if all(r['ok'] for r in rows) else 1
  with tempfile.TemporaryDirectory() as tmp:
    run_dir = pathlib.Path(tmp) / 'run'
    theirs = reference_step(a.reference, run_dir, a.size, a.seed, a.batch, use_onednn=a.onednn,
                            float64=not a.float32)
    print(f'reference: {SCRIPT} flags, size {a.size}, seed {a.seed}, batch {a.batch}; D parameters that the '
          f'backward as published can reach: {theirs["d_grads_as_published"]} (bug B1); with requires_grad '
          f'restored, D tensors with a gradient: {len(theirs["grads"]["discriminator"])}')
    if a.write_fixture:
      write_fixture(a.write_fixture, run_dir, a.size, a.seed, theirs, not a.float32)
      print(f'wrote {a.write_fixture}')
    rows = compare(our_step(run_dir, theirs['batch'], a.seed, weights, a.drop, not a.float32), theirs)
    print(format_rows(rows))
  return 0 if all(r['ok'] for r in rows) else 1


if __name__ == '__main__':
  raise SystemExit(main())

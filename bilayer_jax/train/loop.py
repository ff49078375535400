"""The training loop: `bilayer-jax train --config experiments/base_model.py --workdir DIR`.

From one CPU to a multi-host pod with no code change: the per-device step (step.py) runs under shard_map or
pmap over every device (parallel.py), each host reads its own slice of the data (data.py). The loop resumes
by itself from the latest complete checkpoint in the workdir, saves asynchronously every N steps, saves
and exits cleanly on SIGTERM (a TPU preemption notice), stops on a NaN/Inf loss leaving the last good
checkpoint intact, and writes TensorBoard scalars and image grids (process 0 only). At the end it
recomputes standing BatchNorm statistics and exports an inference checkpoint that `bilayer_jax.load` opens.
"""
from __future__ import annotations

import json
import math
import pathlib
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from bilayer_jax import checkpoint as checkpoint_lib
from bilayer_jax import model as model_lib
from bilayer_jax.train import data as data_lib
from bilayer_jax.train import metrics_window
from bilayer_jax.train import parallel
from bilayer_jax.train.bn_stats import standing_statistics
from bilayer_jax.train.checkpoints import CORRUPT_DIR, CheckpointCorrupt, Checkpointer
from bilayer_jax.train.step import TrainState, base_forward, init_state, make_train_step
from bilayer_jax.train.workdir_lock import workdir_lock
from bilayer_jax.nn.layers import EVAL


class TrainingDiverged(RuntimeError):
  pass


def _model_config(config, axis_name):
  model = config.model.copy_and_resolve_references()
  model.axis_name = axis_name
  return model


def scalar_tag(metric: str) -> str:
  """TensorBoard tag of a step metric: loss terms under loss/, D scores under gan/, optimizer norms under
  their own prefix (grad_norm/GROUP, update_ratio/GROUP)."""
  if '/' in metric:
    return metric
  return f'gan/{metric}' if metric.startswith('D_') and metric.endswith('_score') else f'loss/{metric}'


class DiscriminatorWatch:
  """Warns once when D's loss stays below `threshold` for `patience` logged steps in a row: D then
  separates real from fake by the hinge margin everywhere, its loss gives it no gradient, and the
  adversarial terms stop carrying information to G."""

  def __init__(self, threshold: float, patience: int):
    self.threshold, self.patience = threshold, patience
    self.run, self.warned = 0, False

  def update(self, step: int, d_loss: float) -> str | None:
    if self.patience <= 0 or self.warned:
      return None
    self.run = self.run + 1 if d_loss < self.threshold else 0
    if self.run < self.patience:
      return None
    self.warned = True
    return (f'warning: D_ADV has stayed below {self.threshold:g} for {self.patience} logged steps (step {step}): '
            'the discriminator wins outright and the adversarial terms have stopped teaching the generator')


def initial_variables(config) -> dict:
  """Fresh variables, or for stage 2 the stage-1 checkpoint's base networks and D plus a fresh enhancer."""
  training = config.training
  if training.stage == 'base':
    return model_lib.init_variables(config.model, config.seed)
  if not training.init_checkpoint:
    raise ValueError('stage 2 (training.stage=enhancer) needs training.init_checkpoint: the stage-1 inference '
                     'checkpoint with the base networks and the discriminator')
  base_config, variables = checkpoint_lib.load(training.init_checkpoint)
  needed = set(model_lib.AVATAR_NETWORKS + model_lib.FRAME_NETWORKS + ('discriminator',))
  missing = needed - set(variables)
  if missing:
    raise ValueError(f'{training.init_checkpoint} lacks {sorted(missing)}')
  fresh = model_lib.init_variables(config.model, config.seed, networks=['texture_enhancer'])
  variables = {n: variables[n] for n in needed}
  variables['texture_enhancer'] = fresh['texture_enhancer']
  checkpoint_lib.check_shapes(config.model, variables)
  return variables


def _perceptual(config):
  if not config.training.perceptual:
    return None
  from bilayer_jax.losses import perceptual
  return perceptual.make_perceptual_loss(config.training.perceptual)


def make_image_grid(config, max_rows: int = 4):
  """A function (variables, batch) -> grid in [0, 1] whose rows are source | target | low-frequency |
  warped texture | output | mask | stickman; the forward pass is compiled once."""
  model = _model_config(config, '')
  nets = model_lib.build_networks(model)
  single = config.copy_and_resolve_references()
  single.model = model

  @jax.jit
  def columns(variables, batch):
    out, _ = base_forward(single, nets, variables, batch, EVAL, jnp.float32)
    frame = out['frame']
    mask = frame.get('mask', jnp.ones_like(frame['image'][..., :1]))
    return [out['source']['image'], out['target']['image'], frame['low_freq'], frame['high_freq'],
            frame['image'], jnp.repeat(mask * 2 - 1, 3, -1), out['target']['stickman']]

  def grid(variables, batch) -> np.ndarray:
    small = {k: v[:max_rows] for k, v in batch.items() if k.split('_')[0] in ('source', 'target')}
    cols = [np.asarray(c) for c in columns(variables, small)]
    rows = [np.concatenate([c[i] for c in cols], axis=1) for i in range(cols[0].shape[0])]
    return np.clip((np.concatenate(rows, axis=0) + 1) / 2, 0, 1)

  return grid


def save_png(path, image01: np.ndarray) -> None:
  import cv2
  cv2.imwrite(str(path), cv2.cvtColor((image01 * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))


def build_step(config) -> parallel.DataParallel:
  """The training step of this config compiled for every device present (what `train` runs)."""
  axis = parallel.step_axis_name(config.parallel)
  run_config = config.copy_and_resolve_references()
  run_config.model = _model_config(config, axis or '')
  nets = model_lib.build_networks(run_config.model)
  step_fn = make_train_step(run_config, nets, _perceptual(config), axis)
  dp = parallel.DataParallel(step_fn, config.parallel if axis else 'jit')
  dp.check_batch_size(config.training.batch_size // jax.process_count())
  return dp


def initial_state(config) -> TrainState:
  """Host-side state of a fresh run."""
  return init_state(config, initial_variables(config), config.seed)


def open_workdir(config, workdir, is_main: bool) -> pathlib.Path:
  """The run's folder, created; its config.json written on a new run, or checked against this config's
  model on a resumed one (a workdir holds one model)."""
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  config_path = workdir / 'config.json'
  config_json = config.to_json_best_effort(indent=2, sort_keys=True)
  if config_path.exists():
    saved = json.loads(config_path.read_text())
    if saved.get('model') != json.loads(config_json)['model']:
      raise ValueError(f'{workdir} holds a run with another model config; use a new --workdir')
  elif is_main:
    config_path.write_text(config_json + '\n')
  return workdir


def restore_or_start(checkpointer: Checkpointer, template: TrainState, is_main: bool):
  """(host state, input position, step) of the newest checkpoint that verifies, or of a fresh run. A newer
  one that fails is moved to WORKDIR/corrupt_checkpoints and named."""
  if not checkpointer.all_steps():
    return template, 0, 0
  found = checkpointer.restore_newest_intact(template, log=lambda m: print(m, flush=True) if is_main else None)
  if found is None:
    raise CheckpointCorrupt(f'no checkpoint in {checkpointer.directory} reads back as written (each was moved to '
                            f'{checkpointer.directory.parent / CORRUPT_DIR}); use a new --workdir to start over')
  host_state, meta, start = found
  if is_main:
    print(f'resumed from step {start} (input position {meta["input_position"]})', flush=True)
  return host_state, int(meta['input_position']), start


def write_scalars(writer, metrics: dict, step: int, seconds_per_step: float, batch_size: int) -> None:
  for k, v in metrics.items():
    writer.scalar(scalar_tag(k), v, step)
  writer.scalar('perf/step_time_s', seconds_per_step, step)
  writer.scalar('perf/samples_per_s', batch_size / max(seconds_per_step, 1e-9), step)
  writer.flush()


def export_inference(config, variables: dict, workdir: pathlib.Path, step: int, progress: bool) -> str:
  """Standing BatchNorm statistics (docs/model.md §5.3) of the trained variables -> workdir/inference/step_N, the
  checkpoint bilayer_jax.load opens; an existing one is kept. Returns its path."""
  variables = standing_statistics(config, variables, data_lib.make_batches(config, 0),
                                  config.training.bn_stats_batches, progress)
  if config.training.stage == 'base':
    variables.pop('texture_enhancer', None)  # untrained in stage 1: load() users must not run it
  out = workdir / 'inference' / f'step_{step:07d}'
  if not out.exists():
    checkpoint_lib.save(out, config.model.copy_and_resolve_references(), variables)
    print(f'inference checkpoint: {out}', flush=True)
  return str(out)


def open_summaries(config, workdir: pathlib.Path):
  """(TensorBoard writer, image-grid function or None) of the main process."""
  from bilayer_jax.train.summaries import SummaryWriter

  (workdir / 'images').mkdir(exist_ok=True)
  try:
    writer = SummaryWriter(str(workdir / 'tensorboard'))
  except ImportError:  # an accelerator image without TensorFlow: the metrics log and PNGs still are written
    print(f'TensorFlow is not installed: no TensorBoard events; window means go to '
          f'{workdir / metrics_window.METRICS_FILE}', flush=True)
    writer = None
  return writer, make_image_grid(config) if config.image_every else None


def train(config, workdir, progress: bool = True) -> dict:
  """Run (or resume) training; returns a summary dict ('stopped': 'SIGTERM' when a signal ended it early).
  Raises workdir_lock.WorkdirBusy when another trainer holds the workdir."""
  parallel.maybe_initialize_distributed()
  is_main = jax.process_index() == 0
  workdir = pathlib.Path(workdir).absolute()
  if workdir.exists() and not workdir.is_dir():
    raise ValueError(f'--workdir {workdir} is a file, not a folder')
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lock(workdir, enabled=is_main):
    return _train_holding_lock(config, workdir, progress, is_main)


def _train_holding_lock(config, workdir: pathlib.Path, progress: bool, is_main: bool) -> dict:
  entered = time.time()
  first_step_s = None
  workdir = open_workdir(config, workdir, is_main)
  configure_compilation_cache(config)
  dp = build_step(config)
  checkpointer = Checkpointer(workdir / 'checkpoints', config.checkpoint_every, config.keep_checkpoints,
                              config.async_checkpoints)
  template = initial_state(config)
  host_state, position, start = restore_or_start(checkpointer, template, is_main)
  state = dp.put_state(host_state)
  batches = data_lib.prefetch_to_devices(data_lib.make_batches(config, position), dp.put_batch,
                                         config.get('prefetch_batches', 2))
  metrics_log = metrics_window.MetricsLog(workdir, is_main, start if start else None)
  profile = ProfileWindow(config.get('profile_steps', ''), start, workdir / 'profile')

  writer, image_grid = open_summaries(config, workdir) if is_main else (None, None)

  stop = {'signal': None}
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
  num_steps = config.training.num_steps
  step = start
  last_saved = start
  bar = tqdm(total=num_steps, initial=start, desc='train', disable=not (progress and is_main), dynamic_ncols=True,
             mininterval=1.0 if sys.stderr.isatty() else 30.0)
  time_limit = config.training.get('time_limit_minutes', 0) * 60
  d_watch = DiscriminatorWatch(config.training.get('d_loss_warn_below', 0.01),
                               config.training.get('d_loss_warn_logged_steps', 20)
                               if config.training.loss_weights.adversarial > 0 else 0)
  loss_keys = None
  window, window_first = None, start + 1
  pending = None  # a finished window, fetched once the next step is dispatched
  clock = {'time': time.time(), 'step': start}

  def report(finished):
    """Fetch a finished window: stop on a non-finite loss, else log its means."""
    window_, first, last = finished
    means, bad = metrics_window.fetch(window_)
    if bad is not None:
      raise_diverged(means, bad, (first, last), checkpointer, workdir, template)
    now = time.time()
    seconds = (now - clock['time']) / max(last - clock['step'], 1)
    clock.update(time=now, step=last)
    metrics_log.append(last, last - first + 1, means, seconds)
    bar.set_postfix(total=f'{means["total"]:.3f}', D=f'{means["D_ADV"]:.3f}')
    warning = d_watch.update(last, means['D_ADV'])
    if warning and is_main:
      print(warning, flush=True)
    if writer is not None:
      write_scalars(writer, means, last, seconds, config.training.batch_size)

  started = time.time()
  try:
    while step < num_steps:
      if time_limit and time.time() - started > time_limit:
        if is_main:
          print(f'time limit of {time_limit / 60:.1f} min reached at step {step}; rerun to continue', flush=True)
        break
      local, batch = next(batches)
      profile.before(step + 1)
      state, metrics = dp.step(state, batch)
      step += 1
      position += 1
      if loss_keys is None:  # the first step of this process: compiled (or read from the cache) and dispatched
        loss_keys = tuple(k for k in metrics if scalar_tag(k).startswith('loss/'))
        first_step_s = time.time() - entered
        if is_main and progress:
          print(f'first step compiled and dispatched {first_step_s:.1f} s after start', flush=True)
      window = metrics_window.add(window, metrics, step, loss_keys)
      if pending is not None:  # step `step` is dispatched: now wait for the previous window
        report(pending)
        pending = None
      bar.update(1)
      profile.after(step, state)
      saving = step % config.checkpoint_every == 0 or stop['signal'] is not None or step == num_steps
      if step % config.log_every == 0 or step == num_steps or stop['signal'] is not None:
        pending, window, window_first = (window, window_first, step), None, step + 1
      if saving or (image_grid is not None and step % config.image_every == 0):
        if pending is not None:  # a checkpoint or an image is written only after its steps proved finite
          report(pending)
          pending = None
        elif window is not None:
          if metrics_window.bad_step(window) is not None:
            means, bad = metrics_window.fetch(window)
            raise_diverged(means, bad, (window_first, step), checkpointer, workdir, template)
      if image_grid is not None and (step % config.image_every == 0 or step == num_steps):
        grid = image_grid(dp.get_state(state).variables, local)
        if writer is not None:
          writer.image('samples', grid[None], step)
          writer.flush()
        save_png(workdir / 'images' / f'step_{step:07d}.png', grid)
      if step % config.checkpoint_every == 0:
        checkpointer.save(step, dp.get_state(state), {'input_position': position, 'step': step})
        last_saved = step
      if stop['signal'] is not None:
        if last_saved != step:
          checkpointer.save(step, dp.get_state(state), {'input_position': position, 'step': step}, force=True)
        checkpointer.wait()
        if is_main:
          print(f'SIGTERM: saved step {step} and stopped; rerun the same command to continue', flush=True)
        return {'step': step, 'stopped': 'SIGTERM', 'metrics_file': str(metrics_log.path),
                'first_step_s': first_step_s}
    for finished in (pending, (window, window_first, step) if window is not None else None):
      if finished is not None:  # the time limit ended the run inside a window
        report(finished)
    if last_saved != step:
      checkpointer.save(step, dp.get_state(state), {'input_position': position, 'step': step}, force=True)
    checkpointer.wait()
  finally:
    profile.close()
    bar.close()
    signal.signal(signal.SIGTERM, previous)
    if writer is not None:
      writer.close()
    checkpointer.close()

  summary = {'step': step, 'metrics_file': str(metrics_log.path), 'first_step_s': first_step_s}
  if is_main and config.training.bn_stats_batches > 0:
    summary['inference_checkpoint'] = export_inference(config, dp.get_state(state).variables, workdir, step,
                                                       progress)
  return summary


def raise_diverged(means: dict, bad_step: int, window: tuple, checkpointer, workdir, template):
  """TrainingDiverged naming the first bad step, its logging window, the terms, and a verified checkpoint."""
  terms = [k for k, v in means.items() if scalar_tag(k).startswith('loss/') and not math.isfinite(v)]
  checkpointer.wait()
  good = checkpointer.verified_latest_step(template)
  where = (f'The last good checkpoint (step {good}) in {workdir / "checkpoints"} is intact (verified).'
           if good is not None else f'No checkpoint in {workdir / "checkpoints"} verifies.')
  raise TrainingDiverged(f'loss {", ".join(terms)} is not finite at step {bad_step} (found at the fetch of the '
                         f'logging window of steps {window[0]}-{window[1]}); stopping. {where}')


class ProfileWindow:
  """`profile_steps='START,COUNT'`: a jax.profiler trace of steps START..START+COUNT-1 in WORKDIR/profile
  (TensorBoard's profile plugin or Perfetto open it); '' traces nothing."""

  def __init__(self, spec: str, start: int, directory=None):
    self.directory = directory
    self.first = self.last = None
    self.active = False
    if spec:
      try:
        first, count = (int(v) for v in str(spec).split(','))
      except ValueError:
        raise ValueError(f'profile_steps must be START,COUNT (two integers), got {spec!r}') from None
      if first < 1 or count < 1:
        raise ValueError(f'profile_steps {spec!r}: START and COUNT must be at least 1')
      if first + count - 1 > start:  # a resumed run past the window traces nothing
        self.first, self.last = max(first, start + 1), first + count - 1

  def before(self, step: int) -> None:
    if self.first is not None and step == self.first and not self.active:
      jax.profiler.start_trace(str(self.directory))
      self.active = True

  def after(self, step: int, state) -> None:
    if self.active and step >= self.last:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False
      print(f'profile of steps {self.first}-{self.last}: {self.directory}', flush=True)

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False


COMPILATION_CACHE_BYTES = 8 << 30  # least recently used entries are evicted past this


def configure_compilation_cache(config) -> str | None:
  """JAX's persistent compilation cache in `compilation_cache_dir` ('' = the user cache folder,
  $XDG_CACHE_HOME/bilayer-jax/jax; 'none' = off): a restarted or preempted run skips the compile."""
  import importlib.util
  import os

  setting = config.get('compilation_cache_dir', '')
  if setting == 'none':
    return None
  path = setting or os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'),
                                 'bilayer-jax', 'jax')
  if importlib.util.find_spec('filelock') is None:  # JAX's cache lock needs it
    print('the compilation cache needs the filelock package; running without it', flush=True)
    return None
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  # A size limit turns on JAX's file lock around every cache read and write: without it a process can read an
  # entry another one (a second host process, a second run) is still writing, and load a truncated executable.
  jax.config.update('jax_compilation_cache_max_size', COMPILATION_CACHE_BYTES)
  return path



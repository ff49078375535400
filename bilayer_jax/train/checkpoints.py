"""Preemption-safe training checkpoints with Orbax, verified on restore.

Everything needed to continue exactly is saved: all parameters, optimizer states, BatchNorm statistics,
spectral-norm vectors, the step, the RNG and the input position. Saves are asynchronous; a checkpoint counts
only once Orbax has committed it, so a run killed mid-save restarts from the previous complete one. Each
checkpoint's metadata holds a checksum of every array (`bilayer_jax.integrity`), computed from the state being
saved; a restore recomputes them from what it read, and a checkpoint that does not read back as written (flipped
bytes, a truncated file) raises CheckpointCorrupt instead of loading.
"""
from __future__ import annotations

import errno
import pathlib
import shutil
import time

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from bilayer_jax import integrity
from bilayer_jax.integrity import CheckpointCorrupt

CORRUPT_DIR = 'corrupt_checkpoints'  # beside checkpoints/: Orbax must not see moved-aside steps as its own


def _flat(state_dict) -> dict:
  return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(state_dict)[0]}


class Checkpointer:
  def __init__(self, directory, save_every: int, keep: int, async_save: bool = True):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(save_interval_steps=max(1, save_every), max_to_keep=keep,
                                           enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def check_free_space(self, host_state) -> None:
    """Refuse a save the disk cannot hold, before Orbax starts writing: a save that runs out of space fails in
    background threads, with hundreds of lines of tracebacks, and leaves a partial step behind."""
    needed = sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(host_state))
    needed = max(int(needed * 1.1), needed + (1 << 20))  # metadata, and a margin for the file system
    free = shutil.disk_usage(self.directory).free
    if free < needed:
      raise OSError(errno.ENOSPC, f'not enough free space for a checkpoint (needs about {needed / 2**20:.1f} MiB, '
                    f'{free / 2**20:.1f} MiB free): free space or move the workdir to another disk; the checkpoints '
                    'saved before are intact', str(self.directory))

  def save(self, step: int, state, meta: dict, force: bool = False) -> bool:
    host = flax.serialization.to_state_dict(state)
    if not (force or self.manager.should_save(step)):
      return False
    self.check_free_space(host)
    meta = {**meta, 'checksums': integrity.checksums(_flat(host))}
    return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(host),
                                                           meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, step: int, template):
    """Restore into the structure of `template` (a TrainState on the host). Raises CheckpointCorrupt when the
    checkpoint cannot be read or its arrays differ from the checksums written with it."""
    target = jax.tree_util.tree_map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype),
                                    flax.serialization.to_state_dict(template))
    where = self.directory / str(step)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                    meta=ocp.args.JsonRestore()))
    except Exception as e:  # tensorstore, zarr, JSON and OS errors alike: this step cannot be read
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      raise CheckpointCorrupt(f'checkpoint {where} cannot be read ({type(e).__name__}: {first})') from e
    meta = dict(restored['meta'])
    expected = meta.pop('checksums', None)
    if expected is not None:
      bad = integrity.mismatches(_flat(restored['state']), expected)
      if bad:
        raise CheckpointCorrupt(f'checkpoint {where}: {len(bad)} arrays differ from the checksums written with '
                                f'them ({", ".join(bad[:3])}{", ..." if len(bad) > 3 else ""})')
    return flax.serialization.from_state_dict(template, restored['state']), meta

  def move_aside(self, step: int) -> pathlib.Path:
    """Move a failed checkpoint out of Orbax's folder (never delete it); returns where it went."""
    aside = self.directory.parent / CORRUPT_DIR / f'{step}.{time.strftime("%Y%m%d-%H%M%S")}'
    aside.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(self.directory / str(step)), str(aside))
    self.manager.reload()
    return aside

  def restore_newest_intact(self, template, log=print):
    """(state, meta, step) of the newest checkpoint that verifies, moving each failed newer one aside and saying
    so; None when no checkpoint is left."""
    for step in reversed(self.all_steps()):
      try:
        state, meta = self.restore(step, template)
      except CheckpointCorrupt as e:
        aside = self.move_aside(step)
        log(f'{e}; moved it to {aside} and trying the previous one')
        continue
      return state, meta, step
    return None

  def verified_latest_step(self, template) -> int | None:
    """The newest step that reads back as written (for messages that promise a good checkpoint)."""
    for step in reversed(self.all_steps()):
      try:
        self.restore(step, template)
        return step
      except CheckpointCorrupt:
        continue
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

"""Preemption-safe training checkpoints with Orbax.

Everything needed to continue exactly is saved: all parameters, optimizer states, BatchNorm statistics,
spectral-norm vectors, the step, the RNG and the input position. Saves are asynchronous; a checkpoint counts
only once Orbax has committed it, so a run killed mid-save restarts from the previous complete one.
"""
from __future__ import annotations

import pathlib

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(self, directory, save_every: int, keep: int, async_save: bool = True):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(save_interval_steps=max(1, save_every), max_to_keep=keep,
                                           enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, meta: dict, force: bool = False) -> bool:
    host = flax.serialization.to_state_dict(state)
    return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(host),
                                                           meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, step: int, template):
    """Restore into the structure of `template` (a TrainState on the host)."""
    target = jax.tree_util.tree_map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype),
                                    flax.serialization.to_state_dict(template))
    restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                  meta=ocp.args.JsonRestore()))
    return flax.serialization.from_state_dict(template, restored['state']), restored['meta']

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

"""Data-parallel wrappers around the per-device step: `jax.shard_map` over a global mesh (default) or
`jax.pmap` (the form the original design names; in maintenance mode in current JAX); on a single device,
plain `jax.jit` of a step built without the device axis (`step_axis_name` says which).

Both run the same per-device function with the batch axis named AXIS; the training state is replicated, the
batch is split along its first axis over every device of every host. Each host passes only its own slice
of the global batch (global batch / process count samples).
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = 'batch'


def maybe_initialize_distributed() -> None:
  """`jax.distributed.initialize` when launched as one of several processes (one per TPU host).

  On TPU pods the arguments come from the environment; elsewhere set BILAYER_COORDINATOR (host:port),
  BILAYER_NUM_PROCESSES and BILAYER_PROCESS_ID.
  """
  coordinator = os.environ.get('BILAYER_COORDINATOR')
  if coordinator:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=int(os.environ['BILAYER_NUM_PROCESSES']),
                               process_id=int(os.environ['BILAYER_PROCESS_ID']))
  elif os.environ.get('TPU_WORKER_HOSTNAMES') or os.environ.get('MEGASCALE_COORDINATOR_ADDRESS'):
    jax.distributed.initialize()


def step_axis_name(kind: str) -> str | None:
  """The axis name the per-device step and the networks must be built with for this run.

  None for one device in all under 'shard_map': every collective over a one-device axis is an identity, yet
  XLA still emits it (one all-reduce per BatchNorm statistic and gradient), and on a CPU each is a
  synchronization point of the thunk executor. 'pmap' always maps over a named axis.
  """
  if kind == 'shard_map' and jax.device_count() == 1:
    return None
  return AXIS


def global_mesh(devices=None) -> Mesh:
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (AXIS,))


class DataParallel:
  """Compiles a per-device step for the devices present and moves state and batches in and out."""

  def __init__(self, per_device_step, kind: str = 'shard_map', devices=None):
    """devices: a subset of a single host's devices (tests); default every device of every host."""
    if kind not in ('shard_map', 'pmap', 'jit'):
      raise ValueError(f"parallel must be 'shard_map' or 'pmap' (or 'jit' on one device), got {kind!r}")
    self.kind = kind
    self.num_devices = jax.device_count() if devices is None else len(devices)
    self.num_local_devices = jax.local_device_count() if devices is None else len(devices)
    if kind == 'jit':
      if self.num_devices != 1:
        raise ValueError(f"parallel 'jit' runs on one device; {self.num_devices} are present")
      device = jax.devices()[0] if devices is None else devices[0]
      self._step = jax.jit(per_device_step, donate_argnums=0)
      self._replicated = self._batch_sharding = jax.sharding.SingleDeviceSharding(device)
    elif kind == 'shard_map':
      self.mesh = global_mesh(devices)
      sharded = jax.shard_map(per_device_step, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()),
                              check_vma=False)
      self._step = jax.jit(sharded, donate_argnums=0)
      self._replicated = NamedSharding(self.mesh, P())
      self._batch_sharding = NamedSharding(self.mesh, P(AXIS))
    else:
      self._step = jax.pmap(per_device_step, axis_name=AXIS, donate_argnums=0, devices=devices)
      local = np.asarray(jax.local_devices() if devices is None else devices)
      self._local_slices = NamedSharding(Mesh(local, (AXIS,)), P(AXIS))  # leading axis over the local devices

  def check_batch_size(self, local_batch_size: int) -> None:
    if local_batch_size % self.num_local_devices:
      raise ValueError(f'the per-host batch ({local_batch_size}) must divide evenly over the '
                       f'{self.num_local_devices} local devices')

  def put_state(self, state):
    """Host state -> replicated device state."""
    if self.kind in ('shard_map', 'jit'):
      # From host copies: the step donates its input, which must not delete the caller's arrays.
      return jax.device_put(jax.tree_util.tree_map(np.asarray, state), self._replicated)
    n = self.num_local_devices
    return jax.tree_util.tree_map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)).copy(), state)

  def get_state(self, state):
    """Device state -> one host copy (numpy-backed arrays)."""
    if self.kind in ('shard_map', 'jit'):
      return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), state)
    return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x[0])), state)

  def put_batch(self, local_batch: dict):
    """This host's slice of the global batch -> device arrays."""
    local_batch = {k: v for k, v in local_batch.items() if isinstance(v, np.ndarray) and v.dtype != object}
    first = next(iter(local_batch.values()))
    self.check_batch_size(first.shape[0])
    if self.kind == 'jit':
      return {k: jax.device_put(v, self._batch_sharding) for k, v in local_batch.items()}
    if self.kind == 'shard_map':
      return {k: jax.make_array_from_process_local_data(self._batch_sharding, v) for k, v in local_batch.items()}
    n = self.num_local_devices  # pmap: one slice per local device, put there now (the loop prefetches)
    return {k: jax.device_put(v.reshape((n, v.shape[0] // n) + v.shape[1:]), self._local_slices)
            for k, v in local_batch.items()}

  def step(self, state, batch):
    state, metrics = self._step(state, batch)
    if self.kind == 'pmap':
      metrics = jax.tree_util.tree_map(lambda x: x[0], metrics)
    return state, metrics

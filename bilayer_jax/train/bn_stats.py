"""Standing BatchNorm statistics (docs/model.md §5.3): before evaluation or export, push training batches through the
generator side with BatchNorm in batch-statistics mode and spectral norm frozen, and set each BatchNorm's
running mean and (unbiased) variance to the average over those batches."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from tqdm import tqdm

from bilayer_jax import model as model_lib
from bilayer_jax.nn.layers import STATS
from bilayer_jax.train.step import base_forward

STATS_NETWORKS = ('identity_embedder', 'texture_generator', 'texture_projector', 'keypoints_embedder',
                  'inference_generator', 'inference_projector')


def standing_statistics(config, variables: dict, batches, num_batches: int, progress: bool = True) -> dict:
  model = config.model.copy_and_resolve_references()
  model.axis_name = ''
  model.bn_momentum = 1.0  # each call's running statistics are that batch's
  nets = model_lib.build_networks(model)
  single = config.copy_and_resolve_references()
  single.model = model

  @jax.jit
  def batch_stats(variables, batch):
    _, updated = base_forward(single, nets, {n: dict(v) for n, v in variables.items()}, batch, STATS, jnp.float32)
    return {n: updated[n].get('batch_stats', {}) for n in STATS_NETWORKS if n in updated}

  total = None
  count = 0
  for batch in tqdm(itertools.islice(batches, num_batches), total=num_batches, desc='standing BN statistics',
                    disable=not progress):
    stats = batch_stats(variables, {k: v for k, v in batch.items() if k.split('_')[0] in ('source', 'target')})
    total = stats if total is None else jax.tree_util.tree_map(jnp.add, total, stats)
    count += 1
  if not count:
    raise ValueError('no batches for the standing statistics')
  averaged = jax.tree_util.tree_map(lambda x: x / count, total)
  out = {n: dict(v) for n, v in variables.items()}
  for n, stats in averaged.items():
    if stats:
      out[n]['batch_stats'] = stats
  return out

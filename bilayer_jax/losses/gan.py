"""Adversarial and feature-matching losses (docs/model.md §4): relativistic-average hinge GAN and L1 feature matching.

The relativistic means run over the whole global batch: with `axis_name` set (inside a data-parallel step)
the per-device means are averaged across devices, so 8 devices with 1 sample each compute what one device
with 8 samples computes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bilayer_jax.nn.layers import at_least_float32


def _global_mean(x, axis_name):
  m = jnp.mean(x)
  return jax.lax.pmean(m, axis_name) if axis_name else m


def discriminator_hinge(real_scores, fake_scores, axis_name=None):
  """D_ADV = mean relu(1 - (r - mean f)) + mean relu(1 + (f - mean r)); fakes must already be detached."""
  mean_real = _global_mean(real_scores, axis_name)
  mean_fake = _global_mean(fake_scores, axis_name)
  return (jnp.mean(jax.nn.relu(1.0 - (real_scores - mean_fake)))
          + jnp.mean(jax.nn.relu(1.0 + (fake_scores - mean_real))))


def generator_hinge(fake_scores, real_scores, axis_name=None):
  """G_ADV = mean relu(1 - (f - mean r)) + mean relu(1 + (r - mean f)), real scores detached."""
  real_scores = jax.lax.stop_gradient(real_scores)
  mean_real = _global_mean(real_scores, axis_name)
  mean_fake = _global_mean(fake_scores, axis_name)
  return (jnp.mean(jax.nn.relu(1.0 - (fake_scores - mean_real)))
          + jnp.mean(jax.nn.relu(1.0 + (real_scores - mean_fake))))


def feature_matching(fake_features, real_features):
  """(1/L) * sum_l mean |F_l(fake) - stop_grad(F_l(real))|."""
  terms = [jnp.mean(jnp.abs(at_least_float32(f) - at_least_float32(jax.lax.stop_gradient(r))))
           for f, r in zip(fake_features, real_features)]
  return sum(terms) / len(terms)

"""Shared test setup: tiny models only; paper sizes go through shapes (jax.eval_shape)."""
import os
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / 'tests' / 'fixtures'


@pytest.fixture(scope='session')
def tiny_model():
  import bilayer_jax
  return bilayer_jax.init('tiny', seed=0)


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture(scope='session')
def gpu_accelerator():
  """LiteRT's GPU accelerator is usable here (a Vulkan driver exists): CI must have it (`.ci/run` installs
  it), so there a missing one fails; elsewhere the test is skipped with what to install."""
  from bilayer_jax.export import litert_gpu

  reason = litert_gpu.unavailable_reason()
  if reason:
    message = f'LiteRT GPU accelerator unavailable: {reason}; {litert_gpu.VULKAN_HINT}'
    if os.environ.get('CI', '').lower() == 'true':
      pytest.fail(message)
    pytest.skip(message)

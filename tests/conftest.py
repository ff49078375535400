"""Shared test setup: tiny models only; paper sizes go through shapes (jax.eval_shape)."""
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

"""Parity with the authors' PyTorch networks (eval mode, float32, 1e-4 max abs difference).

The committed fixtures (tests/fixtures/parity_{a,b}) are small reference runs made by
tools/reference_parity.py: fixture a has harmonic keypoint encoding and spectral norm everywhere; fixture b
other tensor sizes, harmonics off, a 3-layer keypoints MLP and plain (non-spectral) weights in two networks.
With BILAYER_REFERENCE=/path/to/bilayer-model, fresh runs are made from the reference code at other sizes
and seeds (and, with -m slow, at the paper size).
"""
import os

import numpy as np
import pytest

pytest.importorskip('torch')
from bilayer_jax import config as config_lib  # noqa: E402
from tools import reference_parity  # noqa: E402  (the checkout's root is on the path: setup.cfg's pythonpath)

from conftest import FIXTURES  # noqa: E402

TOLERANCE = 1e-4


def check(run_dir, golden):
  diffs = reference_parity.compare(run_dir, golden)
  worst = max(diffs, key=diffs.get)
  assert diffs[worst] < TOLERANCE, f'{worst}: {diffs[worst]:.3g} (all: {diffs})'
  assert 'api/image' in diffs and 'api/multi_frame_image' in diffs and 'discriminator/scores' in diffs
  return diffs


@pytest.mark.parametrize('name', ['parity_a', 'parity_b'])
def test_committed_fixture(name):
  folder = FIXTURES / name
  golden = dict(np.load(folder / 'golden.npz'))
  check(folder / 'run', golden)


REFERENCE = os.environ.get('BILAYER_REFERENCE')
needs_reference = pytest.mark.skipif(not REFERENCE, reason='set BILAYER_REFERENCE to a bilayer-model checkout')

FRESH = [
    ('tiny', 21, {}, ()),
    ('micro', 22, dict(inf_num_channels=4, inf_max_channels=16,
                           pse_num_blocks=2), ('discriminator',)),
    ('fixture_b', 23, dict(pse_use_harmonic_enc=True, pse_num_harmonics=2, enh_unrolling_depth=3,
                           enh_guiding_rgb_loss_type='l1'), ()),
]


@needs_reference
@pytest.mark.reference
@pytest.mark.parametrize('size,seed,extra,no_sn', FRESH)
def test_fresh_reference_run(tmp_path, size, seed, extra, no_sn):
  flags = {**config_lib.flags_of(size), **extra}
  golden = reference_parity.make_reference_run(REFERENCE, tmp_path / 'run', flags, seed, no_spectral_norm=no_sn)
  check(tmp_path / 'run', golden)


@needs_reference
@pytest.mark.reference
@pytest.mark.slow
def test_paper_size_reference_run(tmp_path):
  flags = config_lib.flags_of('paper')
  golden = reference_parity.make_reference_run(REFERENCE, tmp_path / 'run', flags, seed=5)
  check(tmp_path / 'run', golden)

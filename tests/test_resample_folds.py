"""The per-avatar graph's conv + resampling folds (export/resample_folds.py) against the unfolded ops, and the
errors a wrong padding, phase order or slice gives (so that these checks can fail)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilayer_jax.export import fold as fold_lib
from bilayer_jax.export import resample_folds
from bilayer_jax.nn.resample import avg_pool_2x

SIZES = [(1, 1), (2, 2), (3, 5), (4, 7), (6, 8), (9, 4)]


def _case(seed, h, w, c_in=3, c_out=5, batch=2):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(batch, h, w, c_in)).astype(np.float32), rng.normal(size=(3, 3, c_in, c_out)),
          rng.normal(size=c_out))


def _f32(a):
  return jnp.asarray(a, jnp.float32)


def _error(got, want):
  """Largest absolute error relative to the largest output magnitude."""
  return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


def _conv(x, kernel, bias, stride, padding):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + bias


def _pool_reference(x, kernel, bias):
  return avg_pool_2x(fold_lib._conv(x, _f32(kernel), _f32(bias)))


def _upsample_reference(x, kernel, bias):
  return fold_lib._conv(fold_lib._upsample(x), _f32(kernel), _f32(bias))


@pytest.mark.parametrize('h, w', [s for s in SIZES if min(s) >= 2])
def test_pool_conv_equals_conv_then_average_pool(h, w):
  x, kernel, bias = _case(h * 10 + w, h, w)
  want = _pool_reference(x, kernel, bias)
  got = resample_folds.pool_conv(x, _f32(resample_folds.pool_conv_kernel(kernel)), _f32(bias))
  assert got.shape == want.shape == (2, h // 2, w // 2, 5)
  assert _error(got, want) < 1e-6


def test_pool_conv_kernel_is_the_box_filtered_kernel():
  _, kernel, _ = _case(0, 2, 2)
  folded = resample_folds.pool_conv_kernel(kernel)
  assert folded.shape == (4, 4, 3, 5) and folded.dtype == np.float64
  np.testing.assert_allclose(folded.sum(axis=(0, 1)), kernel.sum(axis=(0, 1)), rtol=1e-12)
  np.testing.assert_allclose(folded[0, 0], kernel[0, 0] / 4, rtol=1e-12)
  np.testing.assert_allclose(folded[1, 1], kernel[:2, :2].sum(axis=(0, 1)) / 4, rtol=1e-12)


@pytest.mark.parametrize('padding', [((0, 2), (0, 2)), ((2, 0), (2, 0)), ((1, 1), (0, 2))])
def test_pool_conv_with_a_wrong_padding_is_far_off(padding):
  x, kernel, bias = _case(1, 8, 6)
  want = _pool_reference(x, kernel, bias)
  got = _conv(x, _f32(resample_folds.pool_conv_kernel(kernel)), _f32(bias), 2, padding)
  assert got.shape == want.shape
  assert _error(got, want) > 0.1


def test_pool_conv_needs_a_3x3_kernel():
  with pytest.raises(ValueError, match='3x3'):
    resample_folds.pool_conv_kernel(np.zeros((1, 1, 2, 2)))


@pytest.mark.parametrize('h, w', SIZES)
def test_upsample_conv_equals_upsample_then_conv(h, w):
  x, kernel, bias = _case(h * 10 + w + 1, h, w)
  want = _upsample_reference(x, kernel, bias)
  got = resample_folds.upsample_conv(x, _f32(resample_folds.upsample_conv_kernel(kernel)),
                                     _f32(resample_folds.upsample_conv_bias(bias)))
  assert got.shape == want.shape == (2, 2 * h, 2 * w, 5)
  assert _error(got, want) < 1e-6


def test_upsample_conv_kernel_keeps_every_tap_once_per_phase():
  _, kernel, _ = _case(2, 2, 2)
  folded = resample_folds.upsample_conv_kernel(kernel)
  assert folded.shape == (2, 2, 3, 20) and folded.dtype == np.float64
  phases = folded.reshape(2, 2, 3, 4, 5)
  for slot in range(4):
    np.testing.assert_allclose(phases[:, :, :, slot].sum(axis=(0, 1)), kernel.sum(axis=(0, 1)), rtol=1e-12)
  # slot 3 is phase (dy, dx) = (0, 0): its window's top-left pixel gets tap (0, 0) alone
  np.testing.assert_allclose(phases[0, 0, :, 3], kernel[0, 0], rtol=1e-12)


def _broken_upsample_conv(x, kernel, bias, padding=((1, 1), (1, 1)), offset=1, slots=(0, 1, 2, 3)):
  """upsample_conv with one of its parts changed: the conv's padding, the slice's offset, the phase order."""
  _, h, w, _ = x.shape
  c = kernel.shape[-1] // 4
  order = np.concatenate([np.arange(s * c, (s + 1) * c) for s in slots])
  y = _conv(x, kernel[..., order], bias[order], 1, padding)
  y = resample_folds.interleave_phases(y)
  return y[:, offset:offset + 2 * h, offset:offset + 2 * w, :]


@pytest.mark.parametrize('broken', [dict(padding=((0, 2), (0, 2))), dict(padding=((2, 0), (1, 1))),
                                    dict(offset=0), dict(offset=2), dict(slots=(3, 2, 1, 0)),
                                    dict(slots=(1, 0, 3, 2))])
def test_upsample_conv_with_a_wrong_padding_slice_or_phase_order_is_far_off(broken):
  x, kernel, bias = _case(3, 5, 6)
  want = _upsample_reference(x, kernel, bias)
  args = (x, _f32(resample_folds.upsample_conv_kernel(kernel)), _f32(resample_folds.upsample_conv_bias(bias)))
  np.testing.assert_allclose(_broken_upsample_conv(*args), resample_folds.upsample_conv(*args), atol=1e-6)
  assert _error(_broken_upsample_conv(*args, **broken), want) > 0.1


def test_interleave_phases_places_each_slot_in_its_2x2_position():
  y = np.arange(2 * 3 * 4 * 8, dtype=np.float32).reshape(2, 3, 4, 8)  # C = 2
  got = np.asarray(resample_folds.interleave_phases(jnp.asarray(y)))
  assert got.shape == (2, 6, 8, 2)
  for ey in (0, 1):
    for ex in (0, 1):
      np.testing.assert_array_equal(got[:, ey::2, ex::2], y[..., (2 * ey + ex) * 2:(2 * ey + ex + 1) * 2])


def test_the_folded_graph_uses_both_folds(tiny_model):
  from bilayer_jax.export import avatar_graph

  folded = avatar_graph.fold_avatar(tiny_model)
  assert all(b['conv2'][0].shape[:2] == (4, 4) for b in folded.embedder['encoder'])
  assert all(b['conv2'][0].shape[:2] == (3, 3) for b in folded.embedder['decoder'])
  blocks = folded.texture_generator['blocks']
  assert 'conv1' not in blocks[0]  # a precomputed constant
  assert all(b['conv1'][0].shape[:2] == (2, 2) and b['conv1'][0].shape[-1] == 4 * b['conv2'][0].shape[-1]
             for b in blocks[1:])


def test_both_folds_cost_four_ninths_of_the_macs():
  from bilayer_jax.complexity import traced_macs

  x = jax.ShapeDtypeStruct((1, 16, 16, 8), jnp.float32)
  k3, b = jnp.zeros((3, 3, 8, 4)), jnp.zeros(4)
  assert traced_macs(fold_lib._conv, x, k3, b) == 16 * 16 * 8 * 4 * 9
  assert traced_macs(lambda x: resample_folds.pool_conv(x, jnp.zeros((4, 4, 8, 4)), b), x) * 9 == \
      traced_macs(lambda x: _pool_reference(x, k3, b), x) * 4
  # the fold's one padded row and column: (17 / 16)^2
  assert traced_macs(lambda x: resample_folds.upsample_conv(x, jnp.zeros((2, 2, 8, 16)), jnp.zeros(16)), x) * 9 \
      * 16 * 16 == traced_macs(lambda x: _upsample_reference(x, k3, b), x) * 4 * 17 * 17

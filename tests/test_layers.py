"""Layers against plain numpy: convolution, dense, spectral norm, BatchNorm, resampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilayer_jax.nn import layers, norm, resample


def numpy_conv(x, kernel, bias):
  """NHWC 'same' convolution, stride 1, by explicit loops over the kernel taps."""
  k = kernel.shape[0]
  pad = k // 2
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  n, h, w, _ = x.shape
  out = np.zeros((n, h, w, kernel.shape[-1]), np.float64)
  for dy in range(k):
    for dx in range(k):
      out += np.einsum('nhwi,io->nhwo', xp[:, dy:dy + h, dx:dx + w], kernel[dy, dx])
  return out + bias


def test_conv_matches_numpy(rng):
  x = rng.standard_normal((2, 7, 6, 5)).astype(np.float32)
  conv = layers.Conv(4, 3, spectral_norm=False)
  v = conv.init(jax.random.PRNGKey(0), x)
  y = conv.apply(v, x)
  expected = numpy_conv(x, np.asarray(v['params']['kernel']), np.asarray(v['params']['bias']))
  np.testing.assert_allclose(y, expected, atol=1e-5)
  # PyTorch's default initialization bound 1/sqrt(fan_in)
  assert np.abs(v['params']['kernel']).max() <= 1 / np.sqrt(5 * 9)


def numpy_power_iteration(w, u, eps=1e-7):
  v = w.T @ u
  v = v / max(np.linalg.norm(v), eps)
  u = w @ v
  u = u / max(np.linalg.norm(u), eps)
  return u, v, u @ w @ v


def test_spectral_norm_power_iteration_and_eval(rng):
  x = rng.standard_normal((3, 10)).astype(np.float32)
  dense = layers.Dense(6)
  v = dense.init(jax.random.PRNGKey(1), x)
  w = np.asarray(v['params']['kernel']).T  # PyTorch layout (out, in)
  u0 = np.asarray(v['spectral']['sn']['u'])
  # training: one power iteration, stored vectors updated
  y, updates = dense.apply(v, x, layers.TRAIN, mutable=['spectral'])
  u1, v1, sigma = numpy_power_iteration(w.astype(np.float64), u0.astype(np.float64))
  np.testing.assert_allclose(updates['spectral']['sn']['u'], u1, atol=1e-5)
  np.testing.assert_allclose(updates['spectral']['sn']['v'], v1, atol=1e-5)
  np.testing.assert_allclose(y, x @ (w.T / sigma) + np.asarray(v['params']['bias']), atol=1e-5)
  # eval: the stored vectors, no update
  v_new = {**v, **updates}
  y_eval = dense.apply(v_new, x)
  np.testing.assert_allclose(y_eval, y, atol=1e-6)
  # repeated training calls converge to the largest singular value
  state = v
  for _ in range(60):
    _, upd = dense.apply(state, x, layers.TRAIN, mutable=['spectral'])
    state = {**state, **upd}
  top = np.linalg.svd(w, compute_uv=False)[0]
  sigma = float(layers.spectral_sigma(state['params']['kernel'], state['spectral']['sn']['u'], state['spectral']['sn']['v']))
  assert abs(sigma - top) < 1e-3 * top


def test_spectral_conv_uses_pytorch_matrix_layout(rng):
  kernel = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
  m = np.asarray(layers.kernel_to_matrix(jnp.asarray(kernel)))
  oihw = kernel.transpose(3, 2, 0, 1)
  np.testing.assert_array_equal(m, oihw.reshape(5, -1))


def test_fold_spectral_norm_gives_the_same_outputs(rng):
  x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
  conv = layers.Conv(4, 3, spectral_norm=True)
  v = conv.init(jax.random.PRNGKey(2), x)
  _, upd = conv.apply(v, x, layers.TRAIN, mutable=['spectral'])
  v = {**v, **upd}
  folded = layers.fold_spectral_norm(v)
  assert 'spectral' not in folded
  plain = layers.Conv(4, 3, spectral_norm=False)
  np.testing.assert_allclose(plain.apply(folded, x), conv.apply(v, x), atol=1e-6)
  assert not np.allclose(folded['params']['kernel'], v['params']['kernel'])


def test_batchnorm_train_eval_and_unbiased_running_variance(rng):
  x = (rng.standard_normal((4, 3, 3, 5)) * 3 + 1).astype(np.float32)
  bn = norm.BatchNorm(use_affine=True, eps=1e-7)
  v = bn.init(jax.random.PRNGKey(0), x)
  y, upd = bn.apply(v, x, layers.TRAIN, mutable=['batch_stats'])
  flat = x.reshape(-1, 5).astype(np.float64)
  expected = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-7)
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 5), expected, atol=1e-5)
  # momentum 1.0: running stats are the batch's mean and *unbiased* variance (as PyTorch stores)
  np.testing.assert_allclose(upd['batch_stats']['mean'], flat.mean(0), atol=1e-5)
  np.testing.assert_allclose(upd['batch_stats']['var'], flat.var(0, ddof=1), rtol=1e-5)
  # eval uses the running statistics
  v2 = {**v, **upd}
  y_eval = bn.apply(v2, x)
  np.testing.assert_allclose(np.asarray(y_eval).reshape(-1, 5),
                             (flat - flat.mean(0)) / np.sqrt(flat.var(0, ddof=1) + 1e-7), atol=1e-5)


def test_batchnorm_statistics_are_synchronized_over_the_axis(rng):
  x = rng.standard_normal((8, 2, 2, 3)).astype(np.float32)
  bn = norm.BatchNorm(use_affine=False, axis_name='devices')
  v = norm.BatchNorm(use_affine=False).init(jax.random.PRNGKey(0), x)
  whole, upd_whole = norm.BatchNorm(use_affine=False).apply(v, x, layers.TRAIN, mutable=['batch_stats'])
  per_device = lambda xs: bn.apply(v, xs, layers.TRAIN, mutable=['batch_stats'])
  split, upd_split = jax.vmap(per_device, axis_name='devices')(x.reshape(4, 2, 2, 2, 3))
  np.testing.assert_allclose(np.asarray(split).reshape(x.shape), whole, atol=1e-5)
  np.testing.assert_allclose(upd_split['batch_stats']['var'][0], upd_whole['batch_stats']['var'], rtol=1e-5)


@pytest.mark.parametrize('mode', resample.UPSAMPLE_MODES)
def test_upsample_forms_are_nearest_replication(mode, rng):
  x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
  y = resample.upsample_nearest_2x(jnp.asarray(x), mode)
  np.testing.assert_array_equal(y, x.repeat(2, axis=1).repeat(2, axis=2))


def test_avg_pool(rng):
  x = rng.standard_normal((1, 4, 6, 2)).astype(np.float32)
  y = resample.avg_pool_2x(jnp.asarray(x))
  np.testing.assert_allclose(y, x.reshape(1, 2, 2, 3, 2, 2).mean((2, 4)), atol=1e-6)


@pytest.mark.parametrize('n_in,n_out', [(8, 32), (8, 16), (4, 6), (8, 3), (5, 5)])
def test_adaptive_pool_matches_pytorch_bins(n_in, n_out, rng):
  x = rng.standard_normal((1, 2, n_in, n_in)).astype(np.float32)
  y = np.asarray(resample.adaptive_avg_pool_nchw(jnp.asarray(x), n_out))
  expected = np.zeros((1, 2, n_out, n_out))
  for i in range(n_out):
    for j in range(n_out):
      r0, r1 = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
      c0, c1 = (j * n_in) // n_out, -(-((j + 1) * n_in) // n_out)
      expected[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean((2, 3))
  np.testing.assert_allclose(y, expected, atol=1e-6)
  if n_out % n_in == 0:  # docs/model.md Q2: an exact nearest upsampling
    np.testing.assert_allclose(y, x.repeat(n_out // n_in, 2).repeat(n_out // n_in, 3), atol=1e-6)

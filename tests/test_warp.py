"""Bilinear texture sampling: zero padding, both align_corners conventions, gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilayer_jax.nn.warp import identity_grid, sample_texture


def numpy_grid_sample(texture, uv, align_corners):
  """One-pixel-at-a-time bilinear sampling with zero padding (grid_sample semantics)."""
  b, h, w, c = texture.shape
  n, ho, wo, _ = uv.shape
  t = n // b
  out = np.zeros((n, ho, wo, c))
  for f in range(n):
    tex = texture[f // t]
    for i in range(ho):
      for j in range(wo):
        u, v = uv[f, i, j]
        if align_corners:
          x, y = (u + 1) / 2 * (w - 1), (v + 1) / 2 * (h - 1)
        else:
          x, y = ((u + 1) * w - 1) / 2, ((v + 1) * h - 1) / 2
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
          if 0 <= xi < w and 0 <= yi < h:
            out[f, i, j] += tex[yi, xi] * (1 - abs(x - xi)) * (1 - abs(y - yi))
  return out


@pytest.mark.parametrize('align_corners', [False, True])
def test_matches_numpy_including_outside_taps(align_corners, rng):
  texture = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
  uv = rng.uniform(-1.3, 1.3, (4, 4, 3, 2)).astype(np.float32)  # 2 frames per identity, some outside
  got = sample_texture(jnp.asarray(texture), jnp.asarray(uv), align_corners)
  np.testing.assert_allclose(got, numpy_grid_sample(texture, uv, align_corners), atol=1e-5)


def test_identity_grid_is_identity_without_align_corners(rng):
  texture = rng.standard_normal((1, 8, 8, 3)).astype(np.float32)
  out = sample_texture(jnp.asarray(texture), identity_grid(8)[None])
  np.testing.assert_allclose(out, texture, atol=1e-6)
  grid = np.asarray(identity_grid(4))
  np.testing.assert_allclose(grid[0, :, 0], [-0.75, -0.25, 0.25, 0.75])  # x varies along width
  np.testing.assert_allclose(grid[:, 0, 1], [-0.75, -0.25, 0.25, 0.75])  # y along height


def test_gradients_wrt_texture_and_uv(rng):
  texture = jnp.asarray(rng.standard_normal((1, 6, 6, 2)), jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
  uv = jnp.asarray(rng.uniform(-0.8, 0.8, (1, 3, 3, 2)).astype(np.float32))
  weights = jnp.asarray(rng.standard_normal((1, 3, 3, 2)).astype(np.float32))
  loss = lambda t, g: jnp.sum(sample_texture(t, g) * weights)
  g_tex, g_uv = jax.grad(loss, argnums=(0, 1))(texture, uv)
  eps = 1e-2
  for idx in [(0, 2, 3, 1), (0, 0, 0, 0), (0, 5, 1, 0)]:
    d = np.zeros(texture.shape, np.float32)
    d[idx] = eps
    numeric = (loss(texture + d, uv) - loss(texture - d, uv)) / (2 * eps)
    np.testing.assert_allclose(g_tex[idx], numeric, atol=1e-3)
  assert np.abs(np.asarray(g_tex)).sum() > 0
  eps = 1e-3
  for idx in [(0, 1, 1, 0), (0, 2, 0, 1), (0, 0, 2, 0)]:
    d = np.zeros(uv.shape, np.float32)
    d[idx] = eps
    numeric = (loss(texture, uv + d) - loss(texture, uv - d)) / (2 * eps)
    np.testing.assert_allclose(g_uv[idx], numeric, rtol=2e-2, atol=2e-3)


def test_a_bfloat16_warp_samples_where_the_float32_one_does(rng):
  # bfloat16 holds integers exactly only up to 256: coordinates and tap indices must not be computed in it
  texture = jnp.asarray(rng.uniform(-1, 1, (1, 256, 256, 3)), jnp.float32)
  uv = jnp.clip(identity_grid(256)[None] + jnp.asarray(rng.normal(0, 0.01, (1, 256, 256, 2)), jnp.float32), -1, 1)
  exact = sample_texture(texture, uv)
  low = sample_texture(texture.astype(jnp.bfloat16), uv.astype(jnp.bfloat16))
  assert low.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(low)))
  # the only error left is bfloat16's own rounding of uv (about 2^-8 of 1: a third of a pixel at 256 px)
  assert float(jnp.mean(jnp.abs(low.astype(jnp.float32) - exact))) < 0.1

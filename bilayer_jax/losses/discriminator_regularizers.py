"""Ways to keep the discriminator from winning outright on small data; none is in the authors' recipe.

On a dataset of one short clip (the quickstart's 64 frames) D tells every real frame from every generated
one within a few steps, its hinge loss reaches 0 and it stops learning. These are the standard remedies,
each off by default (weight or strength 0):

- `augment_pairs`: the same random translation of every real image and its fake twin before D
  ("differentiable augmentation", Zhao et al. 2020): D can no longer memorise where things are in the few
  real frames, and the generator's gradient passes through the shift.
- `instance_noise`: Gaussian noise on D's images, fading to 0 (Sonderby et al. 2017): the real and fake
  distributions overlap early, so D's margins cannot all be met at once.
- `r1_penalty`: the squared gradient norm of D's scores on real images (Mescheder et al. 2018).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def translate(images: jax.Array, shifts: jax.Array) -> jax.Array:
  """images (N, H, W, C) moved by integer shifts (N, 2) = (dy, dx), zeros where nothing moved in."""
  _, h, w, _ = images.shape

  def one(image, shift):
    dy, dx = shift[0], shift[1]
    rows = jnp.arange(h) - dy
    cols = jnp.arange(w) - dx
    valid = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    moved = image[jnp.clip(rows, 0, h - 1)][:, jnp.clip(cols, 0, w - 1)]
    return jnp.where(valid[..., None], moved, jnp.zeros((), image.dtype))

  return jax.vmap(one)(images, shifts)


def augment_pairs(key: jax.Array, pair: jax.Array, max_shift_fraction: float) -> jax.Array:
  """pair: (2N, H, W, C), reals then fakes. Real i and fake i get the same shift, so feature matching still
  compares like with like; shifts are uniform in [-f*H, f*H] x [-f*W, f*W] pixels."""
  n2, h, w, _ = pair.shape
  limit = jnp.array([round(max_shift_fraction * h), round(max_shift_fraction * w)])
  shifts = jax.random.randint(key, (n2 // 2, 2), -limit, limit + 1)
  return translate(pair, jnp.concatenate([shifts, shifts], 0))


def instance_noise_std(step: jax.Array, std: float, decay_steps: int) -> jax.Array:
  """std at step 0, falling linearly to 0 at decay_steps (constant when decay_steps is 0)."""
  if decay_steps <= 0:
    return jnp.asarray(std, jnp.float32)
  return std * jnp.clip(1.0 - step.astype(jnp.float32) / decay_steps, 0.0, 1.0)


def instance_noise(key: jax.Array, images: jax.Array, std: jax.Array) -> jax.Array:
  return images + (std * jax.random.normal(key, images.shape)).astype(images.dtype)


def r1_penalty(grad_real_inputs: jax.Array) -> jax.Array:
  """mean over real images of |dD/dx|^2 (summed over pixels and channels)."""
  g = grad_real_inputs.astype(jnp.float32)
  return jnp.mean(jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim))))

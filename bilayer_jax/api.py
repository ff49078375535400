"""The public API: `load` a checkpoint, `create_avatar` once per photo, `render` per frame.

  model = bilayer_jax.load(checkpoint_dir)
  avatar = model.create_avatar(source_image, source_keypoints, source_mask=None, enhance=True)
  frame = model.render(avatar, target_keypoints)  # image, low_freq, high_freq, uv, mask

Images are float32 NHWC crops in [-1, 1] (image_size x image_size), masks in [0, 1], keypoints
(..., 68, 2) in [-1, 1] crop coordinates. All networks run in eval mode (running BatchNorm statistics,
spectral norm from the stored vectors).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax import checkpoint as checkpoint_lib
from bilayer_jax import config as config_lib
from bilayer_jax import model as model_lib
from data_pipelines.faces.stickman import draw_stickmen

# Inputs slightly outside [-1, 1] (resampling overshoot) are fine; far outside is a wrong range.
RANGE_TOLERANCE = 0.05


def _check_range(name, value, low, high):
  value = np.asarray(value)
  if not np.all(np.isfinite(value)):
    raise ValueError(f'{name} contains NaN or Inf')
  lo, hi = float(value.min()), float(value.max())
  if lo < low - RANGE_TOLERANCE or hi > high + RANGE_TOLERANCE:
    raise ValueError(f'{name} must lie in [{low}, {high}], got values in [{lo:.3g}, {hi:.3g}]'
                     + (' (images are expected in [-1, 1], not [0, 255] or [0, 1])' if 'image' in name else ''))


class Bilayer:
  """A loaded model: config + variables of each network, with the two phases as methods."""

  def __init__(self, config, variables: dict):
    config_lib.validate(config)
    self.config = config
    self.variables = variables
    self.networks = model_lib.build_networks(config)
    self._avatar_fn = jax.jit(self._make_avatar, static_argnames=('enhance',))
    self._render_fn = jax.jit(self._render)

  # -- per avatar ------------------------------------------------------------------------------------

  def _make_avatar(self, variables, image, stickman, mask, poses, enhance):
    return model_lib.make_avatar(self.config, self.networks, variables, image, stickman, mask, poses, enhance)

  def create_avatar(self, source_image, source_keypoints, source_mask=None, enhance: bool = True):
    """Everything computed once per identity.

    source_image: (H, W, 3) or (B, H, W, 3) in [-1, 1]; source_keypoints: (68, 2) or (B, 68, 2) in [-1, 1];
    source_mask: optional (H, W[, 1]) or (B, H, W[, 1]) soft foreground mask in [0, 1]; without it the
    source is not masked before the identity embedder. enhance: run the texture enhancer (needs its weights).
    Returns an `Avatar` (a pytree) for `render`.
    """
    c = self.config
    s, k = c.image_size, c.num_keypoints
    image = np.asarray(source_image, np.float32)
    keypoints = np.asarray(source_keypoints, np.float32)
    batched = image.ndim == 4
    if image.ndim == 3:
      image = image[None]
    if image.ndim != 4 or image.shape[1:] != (s, s, 3):
      raise ValueError(f'source_image must be ({s}, {s}, 3) or (B, {s}, {s}, 3), got {np.shape(source_image)}')
    b = image.shape[0]
    keypoints = keypoints.reshape((-1,) + keypoints.shape[-2:]) if keypoints.ndim >= 2 else keypoints
    if keypoints.shape != (b, k, 2):
      raise ValueError(f'source_keypoints must be ({k}, 2) per source image ({b} images), got '
                       f'{np.shape(source_keypoints)}')
    _check_range('source_image', image, -1, 1)
    _check_range('source_keypoints', keypoints, -1, 1)
    if source_mask is None:
      mask = np.ones((b, s, s, 1), np.float32)
      use_mask = False
    else:
      mask = np.asarray(source_mask, np.float32)
      if mask.ndim == (4 if batched else 3) - 1:  # no channel axis
        mask = mask[..., None]
      if not batched and mask.ndim == 3:
        mask = mask[None]
      if mask.shape != (b, s, s, 1):
        raise ValueError(f'source_mask must be ({s}, {s}) or ({s}, {s}, 1) per source image, got {np.shape(source_mask)}')
      _check_range('source_mask', mask, 0, 1)
      use_mask = True
    if enhance and 'texture_enhancer' not in self.variables:
      raise ValueError('this checkpoint has no texture enhancer; call create_avatar(..., enhance=False)')
    missing = [n for n in model_lib.AVATAR_NETWORKS if n not in self.variables]
    if missing:
      raise ValueError(f'this checkpoint lacks the per-avatar networks {missing}')
    stickman = draw_stickmen(keypoints, s)
    poses = keypoints.reshape(b, -1)
    config_mask = mask if use_mask else None
    texture, inference_params = self._avatar_fn(
        self.variables, jnp.asarray(image), jnp.asarray(stickman),
        None if config_mask is None else jnp.asarray(config_mask), jnp.asarray(poses), enhance=bool(enhance))
    return model_lib.Avatar(texture=texture, inference_params=inference_params, batched=batched)

  # -- per frame -------------------------------------------------------------------------------------

  def _render(self, frame_variables, avatar, poses):
    out, _ = model_lib.frame_outputs(self.config, self.networks, frame_variables, avatar.texture,
                                     avatar.inference_params, poses.reshape(-1, poses.shape[-1]))
    return out

  def render(self, avatar: model_lib.Avatar, target_keypoints) -> dict:
    """Render poses of an avatar.

    target_keypoints: (..., 68, 2) in [-1, 1]; for a batched avatar of B identities, (B, ..., 68, 2).
    Returns a dict of arrays with the keypoints' leading axes: image, low_freq, high_freq (..., H, W, 3),
    uv (..., H, W, 2) and, when the model predicts masks, mask (..., H, W, 1) in [0, 1].
    """
    c = self.config
    k = c.num_keypoints
    keypoints = jnp.asarray(target_keypoints, jnp.float32)
    if keypoints.ndim < 2 or keypoints.shape[-2:] != (k, 2):
      raise ValueError(f'target_keypoints must have shape (..., {k}, 2), got {keypoints.shape}')
    b = avatar.texture.shape[0]
    lead = keypoints.shape[:-2]
    if avatar.batched:
      if not lead or lead[0] != b:
        raise ValueError(f'a batched avatar of {b} identities needs keypoints (B={b}, ..., {k}, 2), got {keypoints.shape}')
    if not isinstance(keypoints, jax.core.Tracer):
      _check_range('target_keypoints', keypoints, -1, 1)
    poses = keypoints.reshape(b, -1, 2 * k)
    frame_variables = {n: self.variables[n] for n in model_lib.FRAME_NETWORKS}
    out = self._render_fn(frame_variables, avatar, poses)
    result = {name: out[name].reshape(lead + out[name].shape[1:]) for name in ('image', 'low_freq', 'high_freq', 'uv')}
    if 'mask' in out:
      result['mask'] = out['mask'].reshape(lead + out['mask'].shape[1:])
    return result


def load(checkpoint_dir) -> Bilayer:
  """Open a checkpoint folder written by `import-torch`, training or `checkpoint.save`."""
  config, variables = checkpoint_lib.load(checkpoint_dir)
  return Bilayer(config, variables)


def init(size_or_config='tiny', seed: int = 0) -> Bilayer:
  """A randomly initialized model of a named size (or a config)."""
  config = config_lib.get_config(size_or_config) if isinstance(size_or_config, str) else size_or_config
  return Bilayer(config, model_lib.init_variables(config, seed))

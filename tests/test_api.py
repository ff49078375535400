"""The public API: create_avatar / render, input checks, checkpoints."""
import json

import jax
import numpy as np
import pytest

import bilayer_jax
from bilayer_jax import checkpoint
from bilayer_jax import model as model_lib


def inputs(rng, b=None, size=64):
  shape = (size, size) if b is None else (b, size, size)
  image = rng.uniform(-1, 1, shape + (3,)).astype(np.float32)
  kp = rng.uniform(-0.7, 0.7, shape[:-2] + (68, 2)).astype(np.float32)
  mask = rng.uniform(0, 1, shape + (1,)).astype(np.float32)
  return image, kp, mask


def test_create_avatar_and_render_shapes(tiny_model, rng):
  image, kp, mask = inputs(rng)
  avatar = tiny_model.create_avatar(image, kp, mask, enhance=True)
  assert avatar.texture.shape == (1, 64, 64, 3) and not avatar.batched
  frame = tiny_model.render(avatar, rng.uniform(-1, 1, (2, 5, 68, 2)))
  assert frame['image'].shape == (2, 5, 64, 64, 3)
  assert frame['uv'].shape == (2, 5, 64, 64, 2) and frame['mask'].shape == (2, 5, 64, 64, 1)
  np.testing.assert_allclose(frame['image'], frame['low_freq'] + frame['high_freq'], atol=1e-6)
  single = tiny_model.render(avatar, kp)
  assert single['image'].shape == (64, 64, 3)
  assert np.all((np.asarray(single['mask']) >= 0) & (np.asarray(single['mask']) <= 1))


def test_batched_avatars_render_their_own_identity(tiny_model, rng):
  image, kp, mask = inputs(rng, b=2)
  avatar = tiny_model.create_avatar(image, kp, mask, enhance=False)
  assert avatar.batched and avatar.texture.shape[0] == 2
  poses = rng.uniform(-0.7, 0.7, (2, 3, 68, 2)).astype(np.float32)
  both = tiny_model.render(avatar, poses)
  first = tiny_model.render(tiny_model.create_avatar(image[0], kp[0], mask[0], enhance=False), poses[0])
  np.testing.assert_allclose(both['image'][0], first['image'], atol=1e-5)
  with pytest.raises(ValueError, match='batched avatar'):
    tiny_model.render(avatar, poses[0])


def test_the_enhancer_changes_the_texture(tiny_model, rng):
  image, kp, mask = inputs(rng)
  plain = tiny_model.create_avatar(image, kp, mask, enhance=False)
  enhanced = tiny_model.create_avatar(image, kp, mask, enhance=True)
  assert float(np.abs(np.asarray(plain.texture) - np.asarray(enhanced.texture)).max()) > 1e-3


def test_render_needs_only_the_per_frame_networks(tiny_model, rng):
  image, kp, mask = inputs(rng)
  avatar = tiny_model.create_avatar(image, kp, mask, enhance=False)
  frame_only = bilayer_jax.Bilayer(tiny_model.config, {n: tiny_model.variables[n] for n in model_lib.FRAME_NETWORKS})
  np.testing.assert_allclose(frame_only.render(avatar, kp)['image'], tiny_model.render(avatar, kp)['image'], atol=1e-6)
  with pytest.raises(ValueError, match='per-avatar networks'):
    frame_only.create_avatar(image, kp, enhance=False)


@pytest.mark.parametrize('bad,match', [
    (dict(image=np.zeros((32, 32, 3))), 'source_image must be'),
    (dict(image=np.full((64, 64, 3), 200.0)), r'\[0, 255\]'),
    (dict(kp=np.zeros((67, 2))), 'source_keypoints must be'),
    (dict(kp=np.full((68, 2), np.nan)), 'NaN'),
    (dict(mask=np.full((64, 64), 2.0)), 'source_mask must lie'),
    (dict(mask=np.zeros((32, 32))), 'source_mask must be'),
])
def test_bad_inputs_raise_clear_errors(tiny_model, rng, bad, match):
  image, kp, mask = inputs(rng)
  args = dict(image=image, kp=kp, mask=mask[..., 0])
  args.update(bad)
  with pytest.raises(ValueError, match=match):
    tiny_model.create_avatar(args['image'], args['kp'], args['mask'], enhance=False)


def test_render_rejects_bad_keypoints(tiny_model, rng):
  image, kp, mask = inputs(rng)
  avatar = tiny_model.create_avatar(image, kp, enhance=False)
  with pytest.raises(ValueError, match=r'\(\.\.\., 68, 2\)'):
    tiny_model.render(avatar, np.zeros((5, 136)))
  with pytest.raises(ValueError, match='must lie in'):
    tiny_model.render(avatar, np.full((68, 2), 5.0))


def test_checkpoint_round_trip_and_no_silent_overwrite(tiny_model, tmp_path, rng):
  path = checkpoint.save(tmp_path / 'ckpt', tiny_model.config, tiny_model.variables)
  loaded = bilayer_jax.load(path)
  image, kp, mask = inputs(rng)
  a = tiny_model.render(tiny_model.create_avatar(image, kp, mask), kp)['image']
  b = loaded.render(loaded.create_avatar(image, kp, mask), kp)['image']
  np.testing.assert_array_equal(a, b)
  with pytest.raises(FileExistsError):
    checkpoint.save(path, tiny_model.config, tiny_model.variables)
  assert not list(tmp_path.glob('.ckpt.*'))  # no temporary folder left behind


def test_checkpoint_of_the_wrong_shape_is_refused(tiny_model, tmp_path):
  path = checkpoint.save(tmp_path / 'ckpt', tiny_model.config, tiny_model.variables)
  config = json.loads((path / 'config.json').read_text())
  config['inf_num_channels'] = 8
  config['inf_max_channels'] = 32
  (path / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ValueError, match='inference_generator/params/.*shape'):
    bilayer_jax.load(path)
  with pytest.raises(FileNotFoundError, match='not a bilayer-jax checkpoint'):
    bilayer_jax.load(tmp_path)


def test_init_is_deterministic():
  a = model_lib.init_variables(bilayer_jax.init('tiny').config, seed=3, networks=['keypoints_embedder'])
  b = model_lib.init_variables(bilayer_jax.init('tiny').config, seed=3, networks=['keypoints_embedder'])
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)

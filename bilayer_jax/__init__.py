"""bilayer-jax: Fast Bi-layer Neural Synthesis of One-Shot Realistic Head Avatars, in JAX/Flax.

  model = bilayer_jax.load(checkpoint_dir)
  avatar = model.create_avatar(source_image, source_keypoints, source_mask=None, enhance=True)
  frame = model.render(avatar, target_keypoints)
"""
from bilayer_jax.api import Bilayer, init, load
from bilayer_jax.model import Avatar

__version__ = '0.1.0'
__all__ = ['Avatar', 'Bilayer', 'init', 'load']

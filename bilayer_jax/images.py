"""The model's image convention: float RGB in [-1, 1]; uint8 for files, video and the dlib-based metrics."""
from __future__ import annotations

import pathlib

import numpy as np


def to_uint8(images) -> np.ndarray:
  """[-1, 1] float images -> uint8, rounded and clipped."""
  images = np.asarray(images, np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def read_image(path) -> np.ndarray:
  """A photo file -> uint8 RGB (H, W, 3); a clear error naming the file when it is not an image."""
  import imageio.v2 as imageio
  from PIL import Image, ImageOps, UnidentifiedImageError

  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'{path}: no such image file')
  try:  # Pillow reads every still format users have; imageio is only the fallback for the rest
    with Image.open(path) as opened:  # a phone photo's EXIF orientation applied, as every viewer shows it
      image = np.asarray(ImageOps.exif_transpose(opened).convert('RGB'))
  except UnidentifiedImageError:
    try:
      image = np.asarray(imageio.imread(path))
    except Exception as e:  # imageio's message for an unknown format is a plugin-install hint
      head = path.read_bytes()[:16]
      raise ValueError(f'{path} is not an image file Pillow or imageio can read (it starts with {head!r}); '
                       'give a JPEG, PNG, WebP or other still image') from e
  except OSError as e:  # truncated or damaged image data
    raise ValueError(f'{path} is a damaged image ({e})') from e
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, -1)
  return np.ascontiguousarray(image[..., :3]).astype(np.uint8)

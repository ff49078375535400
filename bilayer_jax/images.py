"""The model's image convention: float RGB in [-1, 1]; uint8 for files, video and the dlib-based metrics."""
from __future__ import annotations

import numpy as np


def to_uint8(images) -> np.ndarray:
  """[-1, 1] float images -> uint8, rounded and clipped."""
  images = np.asarray(images, np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)

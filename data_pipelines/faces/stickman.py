"""The stickman image of 68 facial keypoints (docs/model.md §7.3), drawn pixel for pixel as the authors drew it.

Imported weights expect exactly this input: a uint8 canvas filled with 1 (not 0), integer pixel
coordinates (v + 1) / 2 * size truncated toward zero, non-antialiased polylines of thickness 2 in the
iBUG groups and colours below, then mapped to [-1, 1] (background 2/255 - 1).
"""
from __future__ import annotations

import cv2
import numpy as np

# (points, closed, RGB colour), in drawing order.
GROUPS_68 = (
    (tuple(range(0, 17)), False, (255, 255, 255)),        # jaw
    (tuple(range(17, 22)), False, (255, 0, 0)),           # right eyebrow
    (tuple(range(22, 27)), False, (0, 255, 0)),           # left eyebrow
    ((27, 28, 29, 30, 30, 33), False, (0, 0, 255)),       # nose bridge
    (tuple(range(31, 36)), False, (0, 0, 255)),           # nose bottom
    (tuple(range(36, 42)), True, (255, 0, 255)),          # right eye
    (tuple(range(42, 48)), True, (0, 255, 255)),          # left eye
    (tuple(range(48, 60)), True, (255, 255, 0)),          # outer lips
    (tuple(range(60, 68)), True, (255, 255, 0)),          # inner lips
)
THICKNESS = 2


def keypoints_to_pixels(keypoints: np.ndarray, size: int) -> np.ndarray:
  """(68, 2) keypoints in [-1, 1] -> int32 pixel coordinates, computed in float32 like the reference."""
  xy = (np.asarray(keypoints, np.float32) + np.float32(1)) / np.float32(2) * np.float32(size)
  return xy.astype(np.int32)


def draw_stickman(keypoints: np.ndarray, size: int, thickness: int = THICKNESS) -> np.ndarray:
  """One stickman: keypoints (68, 2) in [-1, 1] -> float32 (size, size, 3) image in [-1, 1]."""
  keypoints = np.asarray(keypoints)
  if keypoints.shape != (68, 2):
    raise ValueError(f'expected 68 keypoints as (68, 2), got shape {keypoints.shape}')
  xy = keypoints_to_pixels(keypoints, size)
  canvas = np.ones((size, size, 3), np.uint8)
  for points, closed, colour in GROUPS_68:
    polyline = xy[list(points)][:, None, :]
    canvas = cv2.polylines(canvas, [polyline], closed, colour, thickness=thickness)
  return (canvas.astype(np.float32) / np.float32(255) - np.float32(0.5)) * np.float32(2)


def draw_stickmen(keypoints: np.ndarray, size: int, thickness: int = THICKNESS) -> np.ndarray:
  """Keypoints (..., 68, 2) -> stickmen (..., size, size, 3)."""
  keypoints = np.asarray(keypoints)
  lead = keypoints.shape[:-2]
  flat = keypoints.reshape((-1,) + keypoints.shape[-2:])
  images = [draw_stickman(k, size, thickness) for k in flat]
  return np.stack(images).reshape(lead + (size, size, 3)) if images else np.zeros(lead + (size, size, 3), np.float32)

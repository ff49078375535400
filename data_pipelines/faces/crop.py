"""The authors' face crop (docs/model.md §8, step 4) and the keypoint coordinate conventions (docs/model.md §7.2).

Data flow: a frame (H, W, 3) uint8 + its 68 landmarks in frame pixels -> `crop_box` -> `crop_image`
(square crop, black outside the frame, PIL bicubic resize to the stored size) and `crop_keypoints`
(landmarks in [-1, 1] crop coordinates). `prepare_face` runs the whole path for one photo; the
preprocessing job (data_pipelines/) uses the pieces so that it can smooth boxes over time.

The crop rule, exactly as the authors' inference wrapper: centre = the landmark bounding box's centre
rounded to integers (numpy rounding, half to even), size = int(longest side of the box), the centre moves
up by size // 6, the crop is the square [cx - size, cx + size) x [cy - size, cy + size). Keypoints are
shifted by the crop's corner, divided by its side 2 * size and mapped to [-1, 1].
"""
from __future__ import annotations

import numpy as np
from PIL import Image


class NoFaceError(ValueError):
  """The landmark backend found no face in the image."""


def normalize_keypoints(pixels: np.ndarray, size: float) -> np.ndarray:
  """Pixel coordinates in a square image of side `size` -> [-1, 1] (docs/model.md §7.2: (v / size - 0.5) * 2)."""
  return ((np.asarray(pixels, np.float32) / np.float32(size) - np.float32(0.5)) * np.float32(2)).astype(np.float32)


def denormalize_keypoints(keypoints: np.ndarray, size: float) -> np.ndarray:
  """Inverse of `normalize_keypoints`: [-1, 1] -> pixels of a square image of side `size`."""
  return ((np.asarray(keypoints, np.float32) / np.float32(2) + np.float32(0.5)) * np.float32(size)).astype(np.float32)


def _check_landmarks(landmarks) -> np.ndarray:
  landmarks = np.asarray(landmarks, np.float32)
  if landmarks.ndim != 2 or landmarks.shape[0] < 68 or landmarks.shape[1] < 2:
    raise ValueError(f'expected landmarks of shape (68, 2), got {landmarks.shape}')
  if not np.all(np.isfinite(landmarks[:68, :2])):
    raise ValueError('landmarks contain NaN or Inf')
  return landmarks[:68, :2]


def box_params(landmarks: np.ndarray) -> np.ndarray:
  """(68, 2) landmarks -> unrounded (centre x, centre y, size) of their bounding box, float32.

  These are what temporal smoothing averages; `box_from_params` applies the rounding rule.
  """
  landmarks = _check_landmarks(landmarks)
  low, high = landmarks.min(0), landmarks.max(0)
  centre = (low + high) / np.float32(2)
  return np.array([centre[0], centre[1], (high - low).max()], np.float32)


def box_from_params(params: np.ndarray) -> np.ndarray:
  """(centre x, centre y, size) -> the crop box (left, top, right, bottom) in integer frame pixels."""
  params = np.asarray(params, np.float32)
  centre = params[:2].round().astype(np.int64)
  size = int(params[2])
  if size < 1:
    raise ValueError(f'degenerate face box (size {params[2]:.3g} px)')
  centre[1] -= size // 6
  return np.array([centre[0] - size, centre[1] - size, centre[0] + size, centre[1] + size], np.int64)


def crop_box(landmarks: np.ndarray) -> np.ndarray:
  """The authors' crop box of one face: (left, top, right, bottom), a square of side 2 * size."""
  return box_from_params(box_params(landmarks))


def crop_image(image: np.ndarray, box, size: int, resample=Image.BICUBIC) -> np.ndarray:
  """Crop `box` out of a uint8 (H, W, C) or (H, W) image, black outside it, resize to (size, size).

  Same pixels as PIL's `Image.crop(box).resize((size, size), BICUBIC)`, which the authors used.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim not in (2, 3):
    raise ValueError(f'expected a uint8 (H, W[, C]) image, got {image.dtype} {image.shape}')
  left, top, right, bottom = (int(v) for v in box)
  if right - left != bottom - top or right <= left:
    raise ValueError(f'crop box must be a non-empty square, got {box}')
  height, width = image.shape[:2]
  canvas = np.zeros((bottom - top, right - left) + image.shape[2:], np.uint8)
  x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
  if x1 > x0 and y1 > y0:
    canvas[y0 - top:y1 - top, x0 - left:x1 - left] = image[y0:y1, x0:x1]
  squeeze = canvas.ndim == 3 and canvas.shape[2] == 1
  pil = Image.fromarray(canvas[..., 0] if squeeze else canvas)
  out = np.asarray(pil.resize((size, size), resample))
  return out[..., None] if squeeze else out


def crop_keypoints(landmarks: np.ndarray, box) -> np.ndarray:
  """Landmarks in frame pixels -> (68, 2) float32 in [-1, 1] coordinates of the crop `box`."""
  landmarks = _check_landmarks(landmarks)
  box = np.asarray(box, np.int64)
  side = float(box[2] - box[0])
  return normalize_keypoints(landmarks - box[:2].astype(np.float32), side)


def gaussian_smooth(values: np.ndarray, sigma: float) -> np.ndarray:
  """Smooth a (T, ...) float sequence along time with a Gaussian of `sigma` frames (edges replicated).

  sigma <= 0 returns the input unchanged; used for landmarks and crop boxes of consecutive frames.
  """
  values = np.asarray(values, np.float32)
  if sigma <= 0 or len(values) < 2:
    return values
  radius = max(1, int(np.ceil(3 * sigma)))
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps = (taps / taps.sum()).astype(np.float32)
  padded = np.concatenate([np.repeat(values[:1], radius, 0), values, np.repeat(values[-1:], radius, 0)])
  out = np.zeros_like(values)
  for k, tap in enumerate(taps):
    out += tap * padded[k:k + len(values)]
  return out


def smooth_boxes(landmarks: np.ndarray, sigma: float) -> np.ndarray:
  """(T, 68, 2) landmarks of consecutive frames -> (T, 4) crop boxes with smoothed centre and size.

  With sigma 0 every box equals `crop_box` of its frame.
  """
  params = np.stack([box_params(frame) for frame in landmarks])
  return np.stack([box_from_params(p) for p in gaussian_smooth(params, sigma)])


def crop_face(image: np.ndarray, landmarks: np.ndarray, size: int, box=None) -> dict:
  """One frame -> dict(crop uint8 (size, size, 3), keypoints (68, 2) in [-1, 1], box (4,) int)."""
  box = crop_box(landmarks) if box is None else np.asarray(box, np.int64)
  return {'crop': crop_image(image, box, size), 'keypoints': crop_keypoints(landmarks, box), 'box': box}


def to_model_image(crop: np.ndarray) -> np.ndarray:
  """uint8 crop -> float32 in [-1, 1] the way the authors scaled it ([0, 1], then (x - 0.5) * 2)."""
  return ((np.asarray(crop, np.float32) / np.float32(255) - np.float32(0.5)) * np.float32(2)).astype(np.float32)


def prepare_face(image: np.ndarray, landmarks_backend, size: int = 256, face: int | None = None) -> dict:
  """A photo -> what the model needs: image (size, size, 3) float32 in [-1, 1], keypoints (68, 2) in
  [-1, 1], box (left, top, right, bottom) in photo pixels, landmarks (68, 2) in photo pixels; and which face
  that is: face_index (0 = the largest), faces_found, boxes (every face's box, largest first).

  `landmarks_backend` is any object with `detect(uint8 RGB image) -> (68, 2) pixels or None`
  (data_pipelines.faces.landmarks); with `detect_all` as well, `face` chooses among several faces.
  Raises NoFaceError when it finds no face, ValueError when `face` is not one of those found.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f'expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}')
  if hasattr(landmarks_backend, 'detect_all'):
    found = list(landmarks_backend.detect_all(image))
  else:
    points = landmarks_backend.detect(image)
    found = [] if points is None else [points]
  if not found:
    raise NoFaceError('no face found in the image')
  index = 0 if face is None else int(face)
  if not 0 <= index < len(found):
    raise ValueError(f'face {index} was asked for, but the photo has {len(found)} face(s) found: '
                     f'choose 0 (the largest) to {len(found) - 1}')
  landmarks = np.asarray(found[index], np.float32)
  crop = crop_face(image, landmarks, size)
  return {'image': to_model_image(crop['crop']), 'keypoints': crop['keypoints'], 'box': crop['box'],
          'landmarks': landmarks, 'face_index': index, 'faces_found': len(found),
          'boxes': np.stack([crop_box(np.asarray(points, np.float32)) for points in found])}


def describe_choice(face: dict, source) -> str:
  """One line saying which face of the photo was used, and how to pick another when there are several."""
  box = ', '.join(str(int(v)) for v in face['box'])
  if face['faces_found'] == 1:
    return f'source {source}: one face, box ({box})'
  rank = 'the largest' if face['face_index'] == 0 else f'number {face["face_index"]} by size'
  return (f'source {source}: {face["faces_found"]} faces found; using face {face["face_index"]} ({rank}, box '
          f'({box}) in photo pixels); choose another with --face N (0 = largest ... {face["faces_found"] - 1})')

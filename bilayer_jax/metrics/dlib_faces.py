"""dlib face models for the offline metrics: HOG face detection, 68-/5-point landmarks, 128-D embeddings.

These run on uint8 RGB frames (H, W, 3) and serve the pose error (`pose.py`) and the offline identity
fallback (`identity.py`), where the paper's networks (face-alignment, ArcFace) have no offline weights.
The model files come from the `face-recognition-models` package (found without importing it: its
import needs pkg_resources) or Debian's libdlib-data in /usr/share/dlib. dlib itself is `dlib-bin`.
"""
from __future__ import annotations

import importlib.util
import pathlib

import numpy as np

SHAPE_68 = 'shape_predictor_68_face_landmarks.dat'
SHAPE_5 = 'shape_predictor_5_face_landmarks.dat'
EMBEDDER = 'dlib_face_recognition_resnet_model_v1.dat'


def model_path(name: str) -> pathlib.Path:
  """Path of a dlib model file from face-recognition-models or /usr/share/dlib; clear error if absent."""
  folders = []
  spec = importlib.util.find_spec('face_recognition_models')
  if spec is not None and spec.submodule_search_locations:
    folders.append(pathlib.Path(list(spec.submodule_search_locations)[0]) / 'models')
  folders.append(pathlib.Path('/usr/share/dlib'))
  for folder in folders:
    if (folder / name).is_file():
      return folder / name
  raise FileNotFoundError(f'dlib model {name} not found in {[str(f) for f in folders]}: '
                          '`pip install face-recognition-models==0.3.0` (or apt-get install libdlib-data)')


def _dlib():
  try:
    import dlib
  except ImportError as e:
    raise ImportError('the dlib metrics need dlib: `pip install dlib-bin`') from e
  return dlib


def check_frame(image) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'dlib takes uint8 RGB frames (H, W, 3), got {image.dtype} {image.shape}; '
                     'convert [-1, 1] images with bilayer_jax.metrics.to_uint8')
  return np.ascontiguousarray(image)


def to_uint8(images) -> np.ndarray:
  """[-1, 1] float images -> uint8, rounded and clipped."""
  images = np.asarray(images, np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


class DlibLandmarks:
  """Callable: uint8 RGB frame -> (68, 2) or (5, 2) float pixel coordinates (x, y) of the largest
  HOG-detected face, or None when no face is found.

  upsample: how many times the detector upsamples the frame (1 finds faces down to about 40 pixels).
  """

  def __init__(self, points: int = 68, upsample: int = 1):
    if points not in (5, 68):
      raise ValueError(f'dlib shape predictors have 5 or 68 points, not {points}')
    dlib = _dlib()
    self.points = points
    self.upsample = upsample
    self.detector = dlib.get_frontal_face_detector()
    self.predictor = dlib.shape_predictor(str(model_path(SHAPE_68 if points == 68 else SHAPE_5)))

  def shape(self, image):
    """dlib's full_object_detection of the largest face, or None."""
    image = check_frame(image)
    faces = self.detector(image, self.upsample)
    if len(faces) == 0:
      return None
    face = max(faces, key=lambda r: r.width() * r.height())
    return self.predictor(image, face)

  def __call__(self, image) -> np.ndarray | None:
    shape = self.shape(image)
    if shape is None:
      return None
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


def to_crop_coordinates(points, width: int, height: int) -> np.ndarray:
  """dlib pixel indices (x, y) -> the project's [-1, 1] crop coordinates (pixel centres at index + 0.5)."""
  points = np.asarray(points, np.float32)
  return (points + 0.5) / np.array([width, height], np.float32) * 2 - 1

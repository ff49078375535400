"""Identity preservation without ArcFace weights: dlib's face embedding, reported under its own name.

Offline fallback: dlib's 128-D face embedding (`DlibFaceEmbedder`) with dlib's own chip alignment. Its
cosine is reported as "dlib-embedding cosine": a different network on a different scale (same person
about 0.95-0.98, different people 0.76-0.90), never comparable with CSIM.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from data_pipelines.faces import landmarks as landmarks_lib

log = logging.getLogger(__name__)

DLIB_METRIC_NAME = 'dlib-embedding cosine'


class IdentityScore(NamedTuple):
  """mean over the scored pairs (nan if none), the per-pair scores, and how many pairs were skipped."""
  mean: float
  per_pair: np.ndarray
  skipped: int


class DlibFaceEmbedder:
  """dlib's ResNet face embedding (128-D) with dlib's own face-chip alignment.

  Call with a uint8 RGB frame and, optionally, its landmarks ((68, 2) or (5, 2) pixel coordinates);
  without landmarks the face is found by HOG and the `points`-point shape predictor. Returns None when
  no face is found.
  """
  name = DLIB_METRIC_NAME

  def __init__(self, points: int = 5, upsample: int = 1):
    self.landmarks = landmarks_lib.DlibLandmarks(upsample=(upsample,), points=points)
    self.model = landmarks_lib.dlib_module().face_recognition_model_v1(
        str(landmarks_lib.find_dlib_model(name=landmarks_lib.DLIB_EMBEDDER_MODEL_NAME)))

  def shape(self, image, landmarks=None):
    """dlib's full_object_detection from given landmarks, or detected; None if no face."""
    if landmarks is None:
      return self.landmarks.shape(image)
    dlib = landmarks_lib.dlib_module()
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.shape not in ((68, 2), (5, 2)):
      raise ValueError(f'dlib alignment takes (68, 2) or (5, 2) pixel landmarks, got {landmarks.shape}')
    (x0, y0), (x1, y1) = np.floor(landmarks.min(0)), np.ceil(landmarks.max(0))
    rect = dlib.rectangle(int(x0), int(y0), int(x1), int(y1))
    return dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in landmarks])

  def embed(self, image, shape) -> np.ndarray:
    return np.asarray(self.model.compute_face_descriptor(landmarks_lib.check_image(image), shape), np.float32)

  def __call__(self, image, landmarks=None) -> np.ndarray | None:
    shape = self.shape(landmarks_lib.check_image(image), landmarks)
    return None if shape is None else self.embed(image, shape)


def dlib_embedding_cosine(embedder: DlibFaceEmbedder, fake_frames, real_frames,
                          same_alignment: bool = True) -> IdentityScore:
  """"dlib-embedding cosine" between pairs of uint8 RGB frames (sequences; sizes may differ per pair).

  same_alignment: align both frames of a pair with the face found in the real one (like CSIM); else
  each frame is detected on its own. Pairs without a detected face are skipped, counted and logged.
  """
  if len(fake_frames) != len(real_frames):
    raise ValueError(f'{len(fake_frames)} generated frames but {len(real_frames)} real ones')
  scores, skipped = [], 0
  for fake, real in zip(fake_frames, real_frames):
    if same_alignment and np.shape(fake) != np.shape(real):
      raise ValueError(f'same_alignment needs frames of one size, got {np.shape(fake)} and {np.shape(real)}')
    real_shape = embedder.shape(landmarks_lib.check_image(real))
    fake_shape = real_shape if same_alignment else embedder.shape(landmarks_lib.check_image(fake))
    if real_shape is None or fake_shape is None:
      skipped += 1
      continue
    e_real, e_fake = embedder.embed(real, real_shape), embedder.embed(fake, fake_shape)
    scores.append(float(np.dot(e_real, e_fake) / (np.linalg.norm(e_real) * np.linalg.norm(e_fake))))
  if skipped:
    log.warning('%s: no face found in %d of %d pairs; skipped', DLIB_METRIC_NAME, skipped, len(real_frames))
  per_pair = np.asarray(scores, np.float32)
  return IdentityScore(float(per_pair.mean()) if scores else float('nan'), per_pair, skipped)

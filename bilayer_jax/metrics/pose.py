"""Normalized pose error: how well generated frames follow the driving pose (optional metric, docs/model.md §4).

Landmarks are detected on the generated and on the real frame; the error is the mean Euclidean distance
between corresponding landmarks divided by the real frame's inter-ocular distance (between the centroids
of landmarks 36-41 and 42-47). The landmark detector is passed in: any callable from a uint8 RGB frame to
(68, 2) coordinates, or None when it finds no face - `data_pipelines.faces.landmarks.DlibLandmarks` offline, face-alignment
(the authors' choice) where its weights are installed.
"""
from __future__ import annotations

import logging
from typing import Callable, NamedTuple

import numpy as np

from bilayer_jax.images import to_uint8

log = logging.getLogger(__name__)

RIGHT_EYE = slice(36, 42)   # the subject's right eye: image left
LEFT_EYE = slice(42, 48)


class PoseError(NamedTuple):
  """mean over the scored frames (nan if none), the per-frame errors, and how many frames were skipped."""
  mean: float
  per_frame: np.ndarray
  skipped: int


def normalized_landmark_error(fake_landmarks, real_landmarks) -> np.ndarray:
  """(..., 68, 2) landmarks of generated and real frames -> (...,) errors in inter-ocular units."""
  fake = np.asarray(fake_landmarks, np.float64)
  real = np.asarray(real_landmarks, np.float64)
  if fake.shape != real.shape or fake.shape[-2:] != (68, 2):
    raise ValueError(f'expected two (..., 68, 2) landmark arrays, got {fake.shape} and {real.shape}')
  inter_ocular = np.linalg.norm(real[..., LEFT_EYE, :].mean(-2) - real[..., RIGHT_EYE, :].mean(-2), axis=-1)
  if np.any(inter_ocular <= 0):
    raise ValueError('real landmarks with coincident eye centroids: cannot normalize the pose error')
  return np.linalg.norm(fake - real, axis=-1).mean(-1) / inter_ocular


def pose_error(fake_frames, real_frames, landmarks: Callable) -> PoseError:
  """Normalized pose error over pairs of frames (uint8 RGB, or float in [-1, 1], each (H, W, 3)).

  Pairs where the detector finds no face in either frame are skipped, counted and logged.
  """
  if len(fake_frames) != len(real_frames):
    raise ValueError(f'{len(fake_frames)} generated frames but {len(real_frames)} real ones')
  errors, skipped = [], 0
  for fake, real in zip(fake_frames, real_frames):
    fake, real = np.asarray(fake), np.asarray(real)
    fake = fake if fake.dtype == np.uint8 else to_uint8(fake)
    real = real if real.dtype == np.uint8 else to_uint8(real)
    real_points = landmarks(real)
    fake_points = landmarks(fake) if real_points is not None else None
    if real_points is None or fake_points is None:
      skipped += 1
      continue
    errors.append(float(normalized_landmark_error(fake_points, real_points)))
  if skipped:
    log.warning('pose error: no face found in %d of %d pairs; skipped', skipped, len(real_frames))
  per_frame = np.asarray(errors, np.float32)
  return PoseError(float(per_frame.mean()) if errors else float('nan'), per_frame, skipped)

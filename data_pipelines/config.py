"""The settings of the preprocessing job (`bilayer-jax preprocess`), kept free of heavy imports.

Data flow: the CLI / caller builds a Config -> preprocess.py (plan, stored in plan.json and manifest.json)
-> extract.py in every worker. Every field changes what is written, so a rerun must use the same values.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Config:
  """What the preprocessing job makes. Every field changes the output (see preprocess.py's plan check)."""
  image_size: int = 256                 # stored crop size (the authors stored 512)
  landmarks: str = 'dlib'               # 'dlib' | 'face-alignment'
  segmenter: str = 'selfie'             # 'selfie' | 'none' | 'user' (masks from masks_dir)
  masks_dir: Optional[str] = None       # user masks: MASKS/<clip path without suffix>/<frame>.png, frame aligned
  selfie_model: Optional[str] = None    # path of selfie_segmentation.tflite (default: known locations)
  frame_stride: int = 1                 # use every k-th frame
  max_frames: int = 64                  # per video, evenly spaced over all its clips
  min_frames: int = 2                   # fewer kept frames: no (source, target) pair, video skipped
  min_face_size: int = 32               # px, longest side of the landmark box in the frame
  smooth_landmarks: float = 0.0         # Gaussian sigma over kept frames of a clip; 0 = off
  smooth_boxes: float = 0.0             # same, for the crop centre and size
  jpeg_quality: int = 95
  test_fraction: float = 0.0            # share of identities hashed into 'test' (no split folders given)
  test_identities: tuple = ()           # persons always in 'test'
  videos_per_shard: int = 32

  def validate(self):
    if self.image_size < 16:
      raise ValueError(f'image_size must be >= 16, got {self.image_size}')
    if self.segmenter not in ('selfie', 'none', 'user'):
      raise ValueError(f"segmenter must be 'selfie', 'none' or 'user', got {self.segmenter!r}")
    if self.segmenter == 'user' and not (self.masks_dir and os.path.isdir(self.masks_dir)):
      raise ValueError(f'segmenter user needs an existing masks_dir, got {self.masks_dir!r}')
    for name in ('frame_stride', 'max_frames', 'videos_per_shard'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
    if self.min_frames < 2:
      raise ValueError('min_frames must be >= 2 (a source and a target)')
    if self.max_frames < self.min_frames:
      raise ValueError(f'max_frames ({self.max_frames}) < min_frames ({self.min_frames})')
    if not 0 <= self.test_fraction <= 1:
      raise ValueError(f'test_fraction must lie in [0, 1], got {self.test_fraction}')
    if not 1 <= self.jpeg_quality <= 100:
      raise ValueError(f'jpeg_quality must lie in [1, 100], got {self.jpeg_quality}')

"""One video -> its training frames: decode, detect landmarks, crop, mask, encode. Runs in worker processes.

Data flow: media.Video -> `Extractor(config)(video)` -> a result dict (encoded frames, keypoints, counts,
skipped clips) -> the parent process (data_pipelines/preprocess.py) writes it into a shard.

Per video: the clips' frames form one list (sorted clips, frame order); every `frame_stride`-th frame is a
candidate and at most `max_frames` candidates, evenly spaced over the whole list, are decoded and used.
Frames without a face, with a face smaller than `min_face_size` px (longest side of the landmark box),
or without a user mask are dropped and counted. Landmarks and crop boxes can be smoothed over the kept
frames of each clip (Gaussian, sigma in kept frames). A video with fewer than `min_frames` kept frames
cannot give a (source, target) pair and is skipped. This module imports no TensorFlow, so workers stay light.
"""
from __future__ import annotations

import pathlib
from typing import Optional

import cv2
import numpy as np
from PIL import Image

from data_pipelines.faces import crop as crop_lib
from data_pipelines import media
from data_pipelines.config import Config


def select_frames(lengths, stride: int, max_frames: int) -> list:
  """Clip lengths -> [(clip index, frame index)]: every stride-th frame, at most max_frames evenly spaced."""
  candidates = [(c, f) for c, n in enumerate(lengths) for f in range(0, n, stride)]
  if len(candidates) > max_frames:
    picks = np.unique(np.round(np.linspace(0, len(candidates) - 1, max_frames)).astype(int))
    candidates = [candidates[i] for i in picks]
  return candidates


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
  ok, data = cv2.imencode('.jpg', np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
  if not ok:
    raise RuntimeError('JPEG encoding failed')
  return data.tobytes()


def encode_mask(mask: np.ndarray) -> bytes:
  """float mask in [0, 1] -> 8-bit greyscale PNG bytes."""
  ok, data = cv2.imencode('.png', np.round(np.clip(mask, 0, 1) * 255).astype(np.uint8))
  if not ok:
    raise RuntimeError('PNG encoding failed')
  return data.tobytes()


# Why a selected frame was not written (counted per video and in the manifest).
DROPS = ('unreadable_frame', 'no_face', 'small_face', 'no_mask', 'bad_frame', 'in_skipped_clip', 'in_skipped_video')


class Extractor:
  """Holds a worker's models; call it on a media.Video."""

  def __init__(self, config: Config):
    config.validate()
    self.config = config
    self._landmarks = None
    self._segmenter = None

  @property
  def landmarks(self):
    if self._landmarks is None:
      from data_pipelines.faces import landmarks

      self._landmarks = landmarks.make_backend(self.config.landmarks)
    return self._landmarks

  @property
  def segmenter(self):
    if self._segmenter is None:
      from data_pipelines.faces import segmentation

      if self.config.segmenter == 'selfie':
        self._segmenter = segmentation.SelfieSegmenter(self.config.selfie_model)
      else:
        self._segmenter = segmentation.NoMask()
    return self._segmenter

  def __call__(self, video: media.Video) -> dict:
    result = {'video_id': video.video_id, 'person': video.person, 'split': video.split, 'frames': [],
              'counts': dict.fromkeys(('selected', 'written') + DROPS, 0),
              'skipped_clips': [], 'skipped': None}
    try:
      with media.local_clips(video) as local:  # remote (gs://) video files are read from local copies
        self._extract(local, result)
    except Exception as e:  # one bad video must never stop the job
      result['frames'] = []
      result['skipped'] = f'error: {type(e).__name__}: {str(e).strip()[:300]}'
    if len(result['frames']) < self.config.min_frames:
      kept = len(result['frames'])
      result['frames'] = []
      if not result['skipped']:
        dropped = ', '.join(f'{k} {v}' for k, v in result['counts'].items() if k in DROPS and v)
        result['skipped'] = (f'too few usable frames: {kept} of {result["counts"]["selected"]} '
                             f'(need {self.config.min_frames})' + (f'; dropped: {dropped}' if dropped else ''))
    counts = result['counts']
    counts['written'] = len(result['frames'])
    # Every selected frame is accounted for: written, or dropped for one reason.
    counts['in_skipped_video'] = counts['selected'] - counts['written'] - sum(
        counts[k] for k in DROPS if k != 'in_skipped_video')
    return result

  # -- internals ---------------------------------------------------------------------------------------

  def _extract(self, video: media.Video, result: dict):
    config = self.config
    lengths = []
    for clip in video.clips:
      try:
        lengths.append(media.clip_length(clip))
      except media.ClipError as e:
        result['skipped_clips'].append({'item': clip.name, 'reason': str(e)})
        lengths.append(0)
    if not any(lengths):
      result['skipped'] = 'no readable clip'
      return
    chosen = select_frames(lengths, config.frame_stride, config.max_frames)
    result['counts']['selected'] = len(chosen)
    for c, clip in enumerate(video.clips):
      wanted = [f for ci, f in chosen if ci == c]
      if not wanted:
        continue
      if clip.kind == 'authors':
        self._authors_clip(clip, wanted, result)
        continue
      try:
        images = media.read_clip(clip, wanted)
      except media.ClipError as e:
        result['skipped_clips'].append({'item': clip.name, 'reason': str(e)})
        result['counts']['in_skipped_clip'] += len(wanted)
        continue
      self._raw_clip(clip, wanted, images, result)
    if len(result['skipped_clips']) == len(video.clips):
      result['skipped'] = 'no readable clip'

  def _raw_clip(self, clip: media.Clip, wanted, images: dict, result: dict):
    config, counts = self.config, result['counts']
    kept = []
    for index in wanted:
      image = images.get(index)
      if image is None:
        counts['unreadable_frame'] += 1
        continue
      points = self.landmarks.detect(image)
      if points is None:
        counts['no_face'] += 1
        continue
      if crop_lib.box_params(points)[2] < config.min_face_size:
        counts['small_face'] += 1
        continue
      mask = None
      if config.segmenter == 'user':
        mask = self._user_mask(clip, index)
        if mask is None:
          counts['no_mask'] += 1
          continue
      kept.append((index, image, points, mask))
    if not kept:
      return
    points = crop_lib.gaussian_smooth(np.stack([k[2] for k in kept]), config.smooth_landmarks)
    boxes = crop_lib.smooth_boxes(points, config.smooth_boxes)
    for (index, image, _, user_mask), frame_points, box in zip(kept, points, boxes):
      crop = crop_lib.crop_image(image, box, config.image_size)
      if user_mask is not None:
        mask = crop_lib.crop_image(user_mask, box, config.image_size).astype(np.float32) / 255
      else:
        mask = self.segmenter(crop)
      self._append(result, clip, index, crop, crop_lib.crop_keypoints(frame_points, box), mask, box)

  def _user_mask(self, clip: media.Clip, index: int) -> Optional[np.ndarray]:
    """The user's frame-aligned mask: MASKS/<clip path without suffix>/<frame stem or %06d>.png."""
    folder = pathlib.Path(self.config.masks_dir) / (
        clip.name if clip.kind == 'frames' else str(pathlib.PurePosixPath(clip.name).with_suffix('')))
    stem = pathlib.Path(clip.frames[index]).stem if clip.kind == 'frames' else f'{index:06d}'
    path = folder / f'{stem}.png'
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path.is_file() else None
    return mask

  def _authors_clip(self, clip: media.Clip, wanted, result: dict):
    """Pre-cropped frames of the authors' layout: keypoints from .npy (pixels of the stored image,
    normalised by its width as in docs/model.md §7.2), masks from segs/ when present."""
    config, counts = self.config, result['counts']
    root = pathlib.Path(clip.path)
    for index in wanted:
      stem = clip.frames[index]
      image_path = next((root / 'imgs' / clip.name / f'{stem}{s}' for s in ('.jpg', '.png', '.jpeg')
                         if (root / 'imgs' / clip.name / f'{stem}{s}').is_file()), None)
      image = media.read_image(str(image_path)) if image_path else None
      if image is None:
        counts['unreadable_frame'] += 1
        continue
      height, width = image.shape[:2]
      try:
        points = np.load(root / 'keypoints' / clip.name / f'{stem}.npy').astype(np.float32)
        if height != width or points.ndim != 2 or points.shape[0] < 68 or points.shape[1] < 2:
          raise ValueError(f'image {width}x{height}, keypoints {points.shape}')
      except Exception:
        counts['bad_frame'] += 1
        continue
      keypoints = crop_lib.normalize_keypoints(points[:68, :2], width)
      crop = np.asarray(Image.fromarray(image).resize((config.image_size,) * 2, Image.BICUBIC))
      seg_path = root / 'segs' / clip.name / f'{stem}.png'
      if seg_path.is_file():
        seg = Image.open(seg_path).convert('L').resize((config.image_size,) * 2, Image.BICUBIC)
        mask = np.asarray(seg, np.float32) / 255
      else:
        mask = self.segmenter(crop)
      self._append(result, clip, index, crop, keypoints, mask, np.array([0, 0, width, height]))

  def _append(self, result, clip, index, crop, keypoints, mask, box):
    result['frames'].append({
        'image': encode_jpeg(crop, self.config.jpeg_quality),
        'mask': encode_mask(mask),
        'keypoints': np.asarray(keypoints, np.float32),
        'box': np.asarray(box, np.int64),
        'clip': clip.name,
        'frame': int(index),
    })


_WORKER: Optional[Extractor] = None


def worker_extractor(config: Config) -> Extractor:
  """The Extractor of a worker process (the pool's or a Beam worker's)."""
  cv2.setNumThreads(1)  # parallelism comes from the processes
  return Extractor(config)


def init_worker(config: Config):
  """Process-pool initializer: one Extractor (and its models) per worker process."""
  global _WORKER
  _WORKER = worker_extractor(config)


def run_in_worker(task):
  """task = (shard key, position in shard, media.Video) -> (shard key, position, result)."""
  key, position, video = task
  return key, position, _WORKER(video)

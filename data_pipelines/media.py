"""Finding and reading raw talking-head media: the first stage of `bilayer-jax preprocess`.

Data flow: an input folder -> `scan` -> one `Video` per PERSON/VIDEO (its clips in sorted order, a split)
-> `read_clip` decodes the frames the job asked for -> data_pipelines/extract.py.

Layouts understood by `scan`:
  videos   PERSON/VIDEO/CLIP.{mp4,avi,mov,mkv,webm,...}  (VoxCeleb2); a clip may also be a folder of images
           PERSON/VIDEO/CLIP/FRAME.{jpg,png,...}, and images directly in PERSON/VIDEO/ form one clip.
           Optional top-level split folders: train/ (or dev/) and test/ hold such trees.
  authors  {imgs,keypoints,segs}/{train,test}/PERSON/VIDEO/SEQ/FRAME.{jpg,npy,png} (docs/model.md §7.1): frames are
           already cropped and come with keypoints (and masks); a frame is used when its image and keypoints
           (and mask, when segs/ exists) are all present.
All clips of one video form one frame list, as in the authors' loader. Videos without an explicit split
go to 'test' when their person is in `test_identities`, or else by a hash of the person id.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import pathlib
from typing import Optional, Sequence

import numpy as np

from data_pipelines import fs

VIDEO_SUFFIXES = frozenset({'.mp4', '.m4v', '.mov', '.avi', '.mkv', '.webm', '.mpg', '.mpeg', '.flv', '.wmv',
                            '.3gp', '.ts'})
IMAGE_SUFFIXES = frozenset({'.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff'})
SPLIT_FOLDERS = {'train': 'train', 'dev': 'train', 'test': 'test'}
# A clip that decodes to fewer frames than this share of its container's duration x fps is truncated.
TRUNCATION_TOLERANCE = 0.95


@dataclasses.dataclass(frozen=True)
class Clip:
  name: str                       # path relative to the input folder, shown in the manifest
  kind: str                       # 'video' (a file), 'frames' (image files), 'authors' (pre-cropped frames)
  path: str                       # the video file, or the folder holding the frames
  frames: tuple = ()              # 'frames' / 'authors': frame file stems or names, sorted


@dataclasses.dataclass(frozen=True)
class Video:
  video_id: str                   # PERSON/VIDEO
  person: str
  split: str
  clips: tuple


class _RemoteEntry:
  """What os.scandir gives for a local folder, for one entry of a gs:// (etc.) folder."""

  def __init__(self, entry):
    self.name, self.path, self._is_dir = entry.name, os.fspath(entry), entry.is_dir()

  def is_dir(self) -> bool:
    return self._is_dir

  def is_file(self) -> bool:
    return not self._is_dir


def video_to_dict(video: Video) -> dict:
  """A Video as plain JSON data (the Beam runner hands shards to its workers as JSON lines)."""
  return dataclasses.asdict(video)


def video_from_dict(data: dict) -> Video:
  clips = tuple(Clip(c['name'], c['kind'], c['path'], tuple(c['frames'])) for c in data['clips'])
  return Video(data['video_id'], data['person'], data['split'], clips)


def _sorted_entries(folder):
  if fs.is_remote(folder):
    return sorted((_RemoteEntry(e) for e in fs.path(folder).iterdir()), key=lambda e: e.name)
  return sorted(os.scandir(folder), key=lambda e: e.name)


def _is_hidden(name: str) -> bool:
  return name.startswith('.') or name.endswith('.tmp')


def hashed_split(person: str, test_fraction: float) -> str:
  """Deterministic identity split: the same person always lands in the same split."""
  digest = int.from_bytes(hashlib.sha256(person.encode()).digest()[:8], 'big')
  return 'test' if digest / 2.0 ** 64 < test_fraction else 'train'


def _video_clips(folder, root, skipped: list) -> list:
  clips, loose_images = [], []
  for entry in _sorted_entries(folder):
    if _is_hidden(entry.name):
      continue
    path = fs.path(entry.path)
    rel = path.relative_to(root).as_posix()
    suffix = path.suffix.lower()
    if entry.is_dir():
      images = tuple(e.name for e in _sorted_entries(path)
                     if e.is_file() and pathlib.Path(e.name).suffix.lower() in IMAGE_SUFFIXES)
      if images:
        clips.append(Clip(rel, 'frames', str(path), images))
      else:
        skipped.append({'item': rel, 'reason': 'folder without images'})
    elif suffix in VIDEO_SUFFIXES:
      clips.append(Clip(rel, 'video', str(path)))
    elif suffix in IMAGE_SUFFIXES:
      loose_images.append(entry.name)
    else:
      skipped.append({'item': rel, 'reason': 'not a video or image file'})
  if loose_images:
    clips.insert(0, Clip(folder.relative_to(root).as_posix(), 'frames', str(folder), tuple(loose_images)))
  return clips


def _scan_videos(root, base, split: Optional[str], test_fraction: float,
                 test_identities: frozenset, skipped: list) -> list:
  videos = []
  for person in _sorted_entries(base):
    if _is_hidden(person.name):
      continue
    if not person.is_dir():
      skipped.append({'item': fs.path(person.path).relative_to(root).as_posix(),
                      'reason': 'expected PERSON/VIDEO/CLIP, found a file at the person level'})
      continue
    for video in _sorted_entries(person.path):
      if _is_hidden(video.name):
        continue
      rel = fs.path(video.path).relative_to(root).as_posix()
      if not video.is_dir():
        skipped.append({'item': rel, 'reason': 'expected PERSON/VIDEO/CLIP, found a file at the video level'})
        continue
      clips = _video_clips(fs.path(video.path), root, skipped)
      if not clips:
        skipped.append({'item': rel, 'reason': 'no clips'})
        continue
      video_split = split or ('test' if person.name in test_identities else
                              hashed_split(person.name, test_fraction))
      videos.append(Video(f'{person.name}/{video.name}', person.name, video_split, tuple(clips)))
  return videos


def _scan_authors(root, skipped: list) -> list:
  videos = []
  has_segs = (root / 'segs').is_dir()
  for split in ('train', 'test'):
    base = root / 'imgs' / split
    if not base.is_dir():
      continue
    for person in _sorted_entries(base):
      if not person.is_dir():
        continue
      for video in _sorted_entries(person.path):
        if not video.is_dir():
          continue
        video_id = f'{person.name}/{video.name}'
        clips = []
        for seq in _sorted_entries(video.path):
          if not seq.is_dir():
            continue
          rel = f'{split}/{video_id}/{seq.name}'
          stems = {pathlib.Path(e.name).stem for e in _sorted_entries(seq.path) if e.is_file()}
          kinds = ('keypoints', 'segs') if has_segs else ('keypoints',)
          for kind in kinds:
            folder = root / kind / rel
            stems &= {pathlib.Path(e.name).stem for e in (_sorted_entries(folder) if folder.is_dir() else [])}
          if stems:
            clips.append(Clip(rel, 'authors', str(root), tuple(sorted(stems))))
          else:
            skipped.append({'item': f'imgs/{rel}', 'reason': 'no frame with image, keypoints'
                            + (' and mask' if has_segs else '')})
        if clips:
          videos.append(Video(video_id, person.name, split, tuple(clips)))
  return videos


def detect_layout(root) -> str:
  root = fs.path(root)
  return 'authors' if (root / 'imgs').is_dir() and (root / 'keypoints').is_dir() else 'videos'


def scan(root, test_fraction: float = 0.0, test_identities: Sequence[str] = ()) -> tuple:
  """-> (layout, videos sorted by (split, video id), skipped items [{'item', 'reason'}]).

  `root` may be a local folder or a gs:// (etc.) URI (fs.py); the authors' layout is read locally only.
  """
  root = fs.path(root)
  if not root.is_dir():
    raise FileNotFoundError(f'input folder {root} does not exist')
  skipped = []
  layout = detect_layout(root)
  if layout == 'authors':
    if fs.is_remote(root):
      raise ValueError(f"{root}: the authors' layout is read from a local folder only (copy it to this machine)")
    videos = _scan_authors(root, skipped)
  else:
    tops = [e for e in _sorted_entries(root) if e.is_dir() and not _is_hidden(e.name)]
    if tops and all(e.name in SPLIT_FOLDERS for e in tops):
      videos = []
      for top in tops:
        videos += _scan_videos(root, fs.path(top.path), SPLIT_FOLDERS[top.name], test_fraction,
                               frozenset(test_identities), skipped)
    else:
      videos = _scan_videos(root, root, None, test_fraction, frozenset(test_identities), skipped)
  ids = {}
  for video in videos:
    key = (video.split, video.video_id)
    if key in ids:  # e.g. train/ and dev/ both holding PERSON/VIDEO
      skipped.append({'item': video.clips[0].name, 'reason': f'duplicate video id {video.video_id} in {video.split}'})
    ids.setdefault(key, video)
  return layout, sorted(ids.values(), key=lambda v: (v.split, v.video_id)), skipped


# -- decoding ----------------------------------------------------------------------------------------


class ClipError(Exception):
  """A clip that cannot be used at all (the reason is reported in the manifest)."""


def open_video(path: str):
  """-> (imageio reader, expected frame count or None)."""
  import imageio.v2 as iio

  try:
    reader = iio.get_reader(path, 'ffmpeg')
    meta = reader.get_meta_data()
  except Exception as e:  # imageio raises OSError/RuntimeError/IndexError for broken containers
    raise ClipError(f'unreadable: {type(e).__name__}: {_first_line(e)}') from None
  duration, fps = meta.get('duration'), meta.get('fps')
  expected = None
  if duration and fps and math.isfinite(duration) and math.isfinite(fps) and duration > 0:
    expected = int(round(duration * fps))
  else:
    import imageio_ffmpeg
    try:
      expected = imageio_ffmpeg.count_frames_and_secs(path)[0]
    except Exception as e:
      reader.close()
      raise ClipError(f'unreadable: {type(e).__name__}: {_first_line(e)}') from None
  return reader, expected


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return text[0][:200] if text else ''


@contextlib.contextmanager
def local_clips(video: Video):
  """`video` with its remote video files downloaded to local temporary files (ffmpeg reads local files);
  the clips keep their names, so the output does not depend on where the input was."""
  with contextlib.ExitStack() as stack:
    clips = tuple(dataclasses.replace(c, path=stack.enter_context(fs.local_copy(c.path)))
                  if c.kind == 'video' and fs.is_remote(c.path) else c for c in video.clips)
    yield dataclasses.replace(video, clips=clips)


def clip_length(clip: Clip) -> int:
  """Number of frames of a clip (for a video: from its container, before decoding)."""
  if clip.kind != 'video':
    return len(clip.frames)
  reader, expected = open_video(clip.path)
  reader.close()
  return expected


def read_image(path: str) -> Optional[np.ndarray]:
  """An image file -> uint8 RGB (H, W, 3), or None when it cannot be decoded."""
  import cv2

  if fs.is_remote(path):
    data = np.frombuffer(fs.path(path).read_bytes(), np.uint8) if fs.path(path).is_file() else None
  else:
    data = np.fromfile(path, np.uint8) if os.path.isfile(path) else None
  image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
  return None if image is None else np.ascontiguousarray(image[:, :, ::-1])


def read_clip(clip: Clip, wanted: Sequence[int]) -> dict:
  """Decode the frames `wanted` (indices into the clip) -> {index: uint8 RGB (H, W, 3) or None}.

  None marks an image file that could not be decoded. Raises ClipError for an unreadable or truncated
  video: such a clip is skipped whole, since frames decoded before the damage may already be corrupt.
  """
  wanted = sorted(set(int(i) for i in wanted))
  if clip.kind == 'frames':
    return {i: read_image(os.path.join(clip.path, clip.frames[i])) for i in wanted}
  if clip.kind != 'video':
    raise ValueError(f'read_clip does not read {clip.kind!r} clips')
  reader, expected = open_video(clip.path)
  out, keep, decoded = {}, set(wanted), 0
  try:  # decode to the end even past the last wanted frame: truncation only shows there
    for index, frame in enumerate(reader):
      decoded = index + 1
      if index in keep:
        out[index] = np.ascontiguousarray(frame[:, :, :3])
  except Exception as e:
    raise ClipError(f'decode error after {decoded} frames: {type(e).__name__}: {_first_line(e)}') from None
  finally:
    reader.close()
  if expected and decoded < TRUNCATION_TOLERANCE * expected - 1:
    raise ClipError(f'truncated: decoded {decoded} of {expected} frames')
  if decoded == 0:
    raise ClipError('no frames decoded')
  return out

"""One-shot animation: a photo + a driving video -> a video (`bilayer-jax animate`).

photo -> landmarks -> the authors' crop -> create_avatar (once)
driver frames -> landmarks (no face: the last pose is reused and counted) -> smoothed over time ->
crop-normalized keypoints -> render (JAX, or an exported TFLite graph) -> mp4, optionally driver | output.

With --backend tflite and --tflite FOLDER (a two-file export: `bilayer-jax export CHECKPOINT --out FOLDER`)
the avatar too comes from TFLite: the per-avatar graph runs once on the photo, the per-frame graph per
frame, and no checkpoint is needed (nothing runs in JAX; the texture enhancer is absent from that path).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
from tqdm import tqdm

from data_pipelines.faces import crop as crop_lib
from bilayer_jax import images as images_lib
from bilayer_jax.images import to_uint8

# animate.read_image is the name the CLI and users call; it lives in images.py (export uses it too).
read_image = images_lib.read_image


@dataclasses.dataclass
class Summary:
  frames: int = 0
  rendered: int = 0
  no_face: int = 0            # frames where the driver's face was not found: last pose reused
  leading_no_face: int = 0    # such frames before the first face: the first found pose used
  seconds_per_frame: float = 0.0
  source_faces: int = 1       # faces found in the source photo
  source_face: int = 0        # the one animated (0 = the largest)


def check_output(out_path, overwrite: bool = False) -> pathlib.Path:
  """The output video's path, refused before any work when it exists (unless overwrite) or is a folder."""
  out_path = pathlib.Path(out_path)
  if out_path.is_dir():
    raise IsADirectoryError(f'--out {out_path} is a folder; give the path of an .mp4 file')
  if out_path.exists() and not overwrite:
    raise FileExistsError(f'{out_path} exists; choose another name or pass --overwrite')
  return out_path


def read_video(path, max_frames: int | None = None):
  """Frames of a video as uint8 RGB arrays, and its frame rate."""
  import imageio.v2 as imageio
  if not pathlib.Path(path).is_file():
    raise FileNotFoundError(f'{path}: no such video file')
  try:
    reader = imageio.get_reader(str(path), 'ffmpeg')
  except Exception as e:
    raise ValueError(f'cannot read video {path}: {e}') from e
  fps = float(reader.get_meta_data().get('fps', 25.0))
  frames = []
  try:
    for frame in reader:
      frames.append(np.asarray(frame)[..., :3])
      if max_frames and len(frames) >= max_frames:
        break
  except Exception as e:  # a truncated file: keep what was decoded
    if not frames:
      raise ValueError(f'cannot decode any frame of {path}: {e}') from e
  finally:
    reader.close()
  if not frames:
    raise ValueError(f'{path} has no frames')
  return frames, fps


def driver_keypoints(frames, backend, smoothing: float = 1.0, progress: bool = True):
  """Landmarks of every frame -> (keypoints (T, 68, 2) in [-1, 1], crops (T, S, S, 3) uint8 source, summary)."""
  summary = Summary(frames=len(frames))
  landmarks = []
  for frame in tqdm(frames, desc='driver landmarks', disable=not progress):
    points = backend.detect(np.ascontiguousarray(frame))
    if points is None:
      summary.no_face += 1
      landmarks.append(None)
    else:
      landmarks.append(np.asarray(points, np.float32))
  found = [i for i, p in enumerate(landmarks) if p is not None]
  if not found:
    raise crop_lib.NoFaceError('no face found in any frame of the driving video')
  summary.leading_no_face = found[0]
  filled, last = [], landmarks[found[0]]
  for p in landmarks:
    last = p if p is not None else last
    filled.append(last)
  filled = np.stack(filled)
  if smoothing > 0:
    filled = crop_lib.gaussian_smooth(filled, smoothing)
  boxes = crop_lib.smooth_boxes(filled, smoothing)
  keypoints = np.stack([crop_lib.crop_keypoints(p, b) for p, b in zip(filled, boxes)])
  return keypoints, boxes, summary


def animate(model, photo: np.ndarray, frames, out_path, backend, fps: float = 25.0, enhance: bool = True,
            side_by_side: bool = False, smoothing: float = 1.0, render_backend: str = 'jax',
            tflite_path=None, batch_size: int = 8, progress: bool = True, overwrite: bool = False,
            face: int | None = None, tflite_precision: str = 'fp16') -> Summary:
  """Animate `photo` (uint8 RGB) with `frames` (uint8 RGB list); writes an mp4 at out_path.

  face: which face of the photo when it has several (0 = the largest, the default); the summary says which.
  tflite_path: with render_backend 'tflite', a baked per-frame file (exported with --source from this same
  photo) or a two-file export folder (then model may be None; tflite_precision picks its fp16 or fp32 pair).
  """
  import time

  import imageio.v2 as imageio

  out_path = check_output(out_path, overwrite)
  if render_backend not in ('jax', 'tflite'):
    raise ValueError(f"render backend must be 'jax' or 'tflite', got {render_backend!r}")
  pair = None
  if render_backend == 'tflite' and tflite_path and pathlib.Path(tflite_path).is_dir():
    from bilayer_jax.export import two_file
    pair = two_file.TwoFileAvatar(tflite_path, tflite_precision)
  elif model is None:
    raise ValueError('a checkpoint is needed unless --backend tflite --tflite names a two-file export folder')
  size = pair.image_size if pair else model.config.image_size
  source = crop_lib.prepare_face(photo, backend, size, face=face)
  if progress:
    print(crop_lib.describe_choice(source, 'photo'), flush=True)
  if pair:
    pair_avatar = pair.create_avatar(source['image'], source['keypoints'])
  else:
    if enhance and 'texture_enhancer' not in model.variables:
      enhance = False
    avatar = model.create_avatar(source['image'], source['keypoints'], enhance=enhance)
  keypoints, boxes, summary = driver_keypoints(frames, backend, smoothing, progress)
  summary.source_faces, summary.source_face = source['faces_found'], source['face_index']

  if pair:
    render = lambda kp: pair.render(pair_avatar, kp)
  elif render_backend == 'tflite':
    # An exported graph holds one avatar: it must have been exported from this same photo.
    from bilayer_jax.export.interpreter import TFLiteFrame
    if not tflite_path:
      raise ValueError('--backend tflite needs --tflite PATH (model_fp32.tflite or model_fp16.tflite from export)')
    interpreter = TFLiteFrame(pathlib.Path(tflite_path).read_bytes())
    render = lambda kp: np.stack([interpreter(k.reshape(1, -1))['image'][0] for k in kp])
  else:
    render = lambda kp: np.asarray(model.render(avatar, kp)['image'])

  out_path.parent.mkdir(parents=True, exist_ok=True)
  tmp = out_path.with_name(f'.{out_path.stem}.partial{out_path.suffix}')
  writer = imageio.get_writer(str(tmp), 'ffmpeg', fps=fps, macro_block_size=8, quality=8)
  start = time.time()
  try:
    try:
      for i in tqdm(range(0, len(frames), batch_size), desc='render', disable=not progress):
        images = render(keypoints[i:i + batch_size])
        for j, image in enumerate(images):
          out = to_uint8(image)
          if side_by_side:
            driver = crop_lib.crop_image(np.ascontiguousarray(frames[i + j]), boxes[i + j], size)
            out = np.concatenate([driver, out], axis=1)
          writer.append_data(out)
          summary.rendered += 1
    finally:
      writer.close()
  except BaseException:  # interrupted or failed: no half-written video stays behind
    tmp.unlink(missing_ok=True)
    raise
  tmp.replace(out_path)
  summary.seconds_per_frame = (time.time() - start) / max(summary.rendered, 1)
  return summary


def format_summary(summary: Summary, out_path) -> str:
  faces = (f'; face {summary.source_face} of the {summary.source_faces} in the photo (--face N picks another)'
           if summary.source_faces > 1 else '')
  return (f'wrote {out_path}: {summary.rendered} frames ({summary.seconds_per_frame * 1000:.1f} ms/frame); '
          f'{summary.no_face} driver frames without a face reused the last pose'
          + (f' ({summary.leading_no_face} at the start used the first found pose)' if summary.leading_no_face else '')
          + faces)


def summary_json(summary: Summary) -> str:
  return json.dumps(dataclasses.asdict(summary), indent=2)

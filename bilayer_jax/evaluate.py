"""Evaluation protocols (`bilayer-jax evaluate`): self-reenactment and cross-identity reenactment.

Self-reenactment (the paper's protocol): for each test video, the avatar is made from its first frame and
drives later frames of the same video; outputs are compared with the real frames (LPIPS, SSIM, PSNR, the
identity metric, the normalized pose error). The "copy the source frame" baseline gets the same metrics, so a
model can be seen to beat it. Cross-identity: the avatar of one video is driven by another video's poses;
there is no ground truth, so only identity (output vs the source photo) and pose (output vs the driver) are
scored. Videos come as dicts: name, frames (T, S, S, 3) float32 in [-1, 1], keypoints (T, 68, 2) in [-1, 1],
masks (T, S, S, 1) or None.
"""
from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from bilayer_jax import metrics

PAPER_MEDIUM = {'LPIPS': 0.358, 'SSIM': 0.508, 'CSIM': 0.653, 'pose error': 43.3}


def _nanmean(values):
  values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
  return float(np.mean(values)) if values else float('nan')


class Scorer:
  """Holds the metric networks: LPIPS weights, the identity embedder (dlib offline) and landmarks."""

  def __init__(self, lpips_params=None, identity: str = 'dlib', landmarks=None):
    self.lpips_params = lpips_params if lpips_params is not None else metrics.load_lpips_params()
    self.identity_name = identity
    self.embedder = metrics.DlibFaceEmbedder() if identity == 'dlib' else None
    self.landmarks = landmarks if landmarks is not None else metrics.DlibLandmarks(upsample=(1,))

  def pairs(self, fake, real, source=None) -> dict:
    """Metrics of generated vs real frames (float [-1, 1], (N, S, S, 3))."""
    fake = np.clip(np.asarray(fake, np.float32), -1, 1)
    real = np.asarray(real, np.float32)
    out = {
        'PSNR': float(metrics.psnr(fake, real, data_range=2.0)),
        'SSIM': float(metrics.ssim(fake, real, data_range=2.0)),
        'LPIPS': float(np.mean(np.asarray(metrics.lpips(self.lpips_params, jnp.asarray(fake), jnp.asarray(real),
                                                        reduce=False)))),
    }
    out.update(self.identity_and_pose(fake, real, real if source is None else source))
    return out

  def identity_and_pose(self, fake, pose_reference, identity_reference) -> dict:
    fake_u8, pose_u8 = metrics.to_uint8(fake), metrics.to_uint8(pose_reference)
    identity_u8 = metrics.to_uint8(identity_reference)
    out = {}
    if self.embedder is not None:
      if len(identity_u8) != len(fake_u8):
        identity_u8 = np.repeat(identity_u8[:1], len(fake_u8), 0)
      score = metrics.dlib_embedding_cosine(self.embedder, list(fake_u8), list(identity_u8), same_alignment=False)
      out[metrics.DLIB_METRIC_NAME] = score.mean
    pose = metrics.pose_error(list(fake_u8), list(pose_u8), self.landmarks)
    out['pose error'] = pose.mean
    out['pose skipped'] = pose.skipped
    return out


def self_reenactment(model, videos, scorer: Scorer, max_targets: int = 32, enhance: bool = True,
                     progress: bool = True) -> dict:
  per_video = []
  for video in tqdm(list(videos), desc='self-reenactment', disable=not progress):
    frames, keypoints = video['frames'], video['keypoints']
    if len(frames) < 2:
      per_video.append({'video': video['name'], 'skipped': 'fewer than 2 frames'})
      continue
    targets = np.linspace(1, len(frames) - 1, min(max_targets, len(frames) - 1)).round().astype(int)
    mask = None if video.get('masks') is None else video['masks'][0]
    avatar = model.create_avatar(frames[0], keypoints[0], mask,
                                 enhance=enhance and 'texture_enhancer' in model.variables)
    fake = np.asarray(model.render(avatar, keypoints[targets])['image'])
    real = frames[targets]
    row = {'video': video['name'], 'targets': len(targets)}
    row['model'] = scorer.pairs(fake, real, source=frames[:1])
    row['copy source'] = scorer.pairs(np.repeat(frames[:1], len(targets), 0), real, source=frames[:1])
    per_video.append(row)
  return summarize('self-reenactment', per_video)


def cross_identity(model, videos, scorer: Scorer, max_targets: int = 16, enhance: bool = True,
                   progress: bool = True) -> dict:
  videos = list(videos)
  per_video = []
  for i, source in enumerate(tqdm(videos, desc='cross-identity', disable=not progress)):
    driver = videos[(i + 1) % len(videos)]
    if driver is source:
      break
    targets = np.linspace(0, len(driver['frames']) - 1, min(max_targets, len(driver['frames']))).round().astype(int)
    mask = None if source.get('masks') is None else source['masks'][0]
    avatar = model.create_avatar(source['frames'][0], source['keypoints'][0], mask,
                                 enhance=enhance and 'texture_enhancer' in model.variables)
    fake = np.asarray(model.render(avatar, driver['keypoints'][targets])['image'])
    scores = scorer.identity_and_pose(fake, driver['frames'][targets], source['frames'][:1])
    per_video.append({'video': f'{source["name"]} driven by {driver["name"]}', 'targets': len(targets),
                      'model': scores})
  return summarize('cross-identity', per_video)


def summarize(protocol: str, per_video: list) -> dict:
  scored = [row for row in per_video if 'model' in row]
  systems = [s for s in ('model', 'copy source') if any(s in row for row in scored)]
  keys = sorted({k for row in scored for s in systems for k in row[s]} - {'pose skipped'})
  mean = {s: {k: _nanmean([row[s].get(k) for row in scored]) for k in keys} for s in systems}
  return {'protocol': protocol, 'videos': len(scored),
          'skipped': [row for row in per_video if 'skipped' in row], 'mean': mean, 'per_video': per_video}


def markdown(result: dict, checkpoint: str = '', data: str = '') -> str:
  mean = result['mean']
  keys = sorted({k for s in mean.values() for k in s})
  lines = [f'### {result["protocol"]} ({result["videos"]} videos)',
           f'checkpoint: `{checkpoint}`; data: `{data}`' if checkpoint or data else '', '',
           '| system | ' + ' | '.join(keys) + ' |', '|---|' + '--:|' * len(keys)]
  for system, values in mean.items():
    lines.append(f'| {system} | ' + ' | '.join(_fmt(values.get(k)) for k in keys) + ' |')
  return '\n'.join(line for line in lines if line is not None)


def _fmt(v):
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return 'n/a'
  return f'{v:.3f}' if abs(v) < 100 else f'{v:.1f}'


def write(result: dict, out_json, out_md=None, **labels) -> None:
  import pathlib
  pathlib.Path(out_json).write_text(json.dumps(result, indent=2, default=float) + '\n')
  if out_md:
    pathlib.Path(out_md).write_text(markdown(result, **labels) + '\n')

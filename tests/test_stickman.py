"""The stickman drawn pixel for pixel as the authors drew it (docs/model.md §7.3)."""
import numpy as np
import pytest

from data_pipelines.faces.stickman import GROUPS_68, draw_stickman, draw_stickmen, keypoints_to_pixels

BACKGROUND = 1 / 255 * 2 - 1


def keypoints_from_pixels(points, size):
  """Keypoints in [-1, 1] that land on the given integer pixels."""
  return (np.asarray(points, np.float32) + 0.25) / size * 2 - 1


def test_background_value_and_range():
  size = 64
  kp = keypoints_from_pixels(np.tile([[10, 10]], (68, 1)), size)
  image = draw_stickman(kp, size)
  assert image.shape == (size, size, 3) and image.dtype == np.float32
  np.testing.assert_allclose(image[40, 40], [BACKGROUND] * 3, atol=1e-7)  # canvas filled with 1, not 0


def test_horizontal_jaw_line_is_white_and_drawn_with_round_caps():
  size = 64
  points = np.tile([[5, 50]], (68, 1))
  points[0:17] = [[10 + i, 20] for i in range(17)]  # jaw: a horizontal line y = 20, x = 10..26
  image = draw_stickman(keypoints_from_pixels(points, size), size)
  line = (image == 1.0).all(-1)
  # OpenCV's thickness 2 is a radius-1 brush: rows 19..21, and one pixel past each end point.
  np.testing.assert_array_equal(np.where(line[:, 18])[0], [19, 20, 21])
  np.testing.assert_array_equal(np.where(line[20])[0], np.arange(9, 28))
  assert line.sum() == 3 * 19 - 4  # a 3x19 band less its four corners; nothing else is white


def test_group_colours_and_drawing_order():
  size = 64
  points = np.tile([[60, 60]], (68, 1))
  points[17:22] = [[5 + 2 * i, 5] for i in range(5)]     # right eyebrow: red
  points[22:27] = [[5 + 2 * i, 12] for i in range(5)]    # left eyebrow: green
  points[36:42] = [[30, 30], [34, 30], [34, 34], [30, 34], [30, 32], [30, 31]]  # right eye: magenta, closed
  image = draw_stickman(keypoints_from_pixels(points, size), size)
  np.testing.assert_allclose(image[5, 8], [1, -1, -1], atol=1e-6)
  np.testing.assert_allclose(image[12, 8], [-1, 1, -1], atol=1e-6)
  np.testing.assert_allclose(image[32, 34], [1, -1, 1], atol=1e-6)
  assert [g[2] for g in GROUPS_68][:3] == [(255, 255, 255), (255, 0, 0), (0, 255, 0)]


def test_pixel_coordinates_truncate_like_the_reference():
  kp = np.array([[-1.0, 1.0], [0.0, -0.999], [0.999, 0.5]], np.float32)
  np.testing.assert_array_equal(keypoints_to_pixels(kp, 256), [[0, 256], [128, 0], [255, 192]])


def test_batched_and_bad_shapes():
  kp = np.zeros((2, 3, 68, 2), np.float32)
  assert draw_stickmen(kp, 32).shape == (2, 3, 32, 32, 3)
  with pytest.raises(ValueError, match='68 keypoints'):
    draw_stickman(np.zeros((5, 2)), 32)

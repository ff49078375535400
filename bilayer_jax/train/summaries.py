"""TensorBoard event files (scalars, images) through tf.summary; only process 0 creates a writer."""
from __future__ import annotations

import numpy as np


class SummaryWriter:
  def __init__(self, logdir: str):
    import tensorflow as tf  # only the writer needs TensorFlow

    self._tf = tf
    self._writer = tf.summary.create_file_writer(logdir)

  def scalar(self, tag: str, value: float, step: int) -> None:
    with self._writer.as_default():
      self._tf.summary.scalar(tag, value, step=step)

  def image(self, tag: str, images01: np.ndarray, step: int) -> None:
    with self._writer.as_default():
      self._tf.summary.image(tag, np.asarray(images01, np.float32), step=step, max_outputs=4)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def read_scalars(logdir, tag: str) -> list[tuple[int, float]]:
  """(step, value) pairs of a scalar tag from the event files in logdir (for tests and reports)."""
  import pathlib

  import tensorflow as tf

  points = []
  for path in sorted(pathlib.Path(logdir).glob('events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.tag == tag:
          points.append((event.step, float(tf.make_ndarray(value.tensor))))
  return points

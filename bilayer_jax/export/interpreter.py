"""Running .tflite files on this machine: the interpreter (LiteRT, tflite-runtime or TensorFlow's), one frame
per call, and latency (export, step 3; animate --backend tflite uses it too)."""
from __future__ import annotations

import importlib
import statistics
import time

import numpy as np


def interpreter_backend() -> tuple[str, type]:
  """(name, Interpreter class): ai-edge-litert, else tflite-runtime, else TensorFlow's."""
  for module, name in (('ai_edge_litert.interpreter', 'ai_edge_litert'),
                       ('tflite_runtime.interpreter', 'tflite_runtime')):
    try:
      return name, importlib.import_module(module).Interpreter
    except ImportError:
      pass
  import tensorflow as tf
  return 'tensorflow', tf.lite.Interpreter


class TFLiteFrame:
  """A converted frame model in an interpreter: __call__(keypoints (1, 2K)) -> {'image', ['mask']}."""

  def __init__(self, model: bytes, num_threads: int = 1):
    self.backend, interpreter_class = interpreter_backend()
    self.interpreter = interpreter_class(model_content=model, num_threads=num_threads)
    self.interpreter.allocate_tensors()
    inputs = self.interpreter.get_input_details()
    if len(inputs) != 1:
      raise ValueError(f'expected one input (keypoints), found {len(inputs)}')
    self._input = inputs[0]['index']
    self._outputs = {}
    for detail in self.interpreter.get_output_details():
      channels = int(detail['shape'][-1])
      name = {3: 'image', 1: 'mask'}.get(channels)
      if name is None or name in self._outputs:
        raise ValueError(f'unexpected output {detail["name"]} of shape {detail["shape"]}')
      self._outputs[name] = detail['index']

  def set_input(self, keypoints):
    self.interpreter.set_tensor(self._input, np.asarray(keypoints, np.float32).reshape(1, -1))

  def invoke(self):
    self.interpreter.invoke()

  def __call__(self, keypoints) -> dict:
    self.set_input(keypoints)
    self.invoke()
    return {name: self.interpreter.get_tensor(index).copy() for name, index in self._outputs.items()}


def latency_ms(model: bytes, num_threads: int, runs: int, warmup: int = 3) -> float:
  """Median wall time of one invoke, in milliseconds (fixed input; interpreter with num_threads)."""
  frame = TFLiteFrame(model, num_threads)
  frame.set_input(np.zeros((1, frame.interpreter.get_input_details()[0]['shape'][-1]), np.float32))
  for _ in range(warmup):
    frame.invoke()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    frame.invoke()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)

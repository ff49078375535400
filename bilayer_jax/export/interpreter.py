"""Running .tflite files on this machine: the interpreter (LiteRT, tflite-runtime or TensorFlow's), one frame
per call (TFLiteFrame: a baked avatar; TFLiteGraph: any named inputs, the two-file export's graphs), and
latency (export, step 3; animate --backend tflite uses it too)."""
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


class TFLiteGraph:
  """A converted graph with any number of named inputs (the two-file export's graphs):
  __call__({name: array}) -> [output arrays] in the file's output order."""

  def __init__(self, model: bytes, num_threads: int = 1):
    self.backend, interpreter_class = interpreter_backend()
    self.interpreter = interpreter_class(model_content=model, num_threads=num_threads)
    self.interpreter.allocate_tensors()
    self.inputs = {d['name']: d for d in self.interpreter.get_input_details()}
    self.outputs = self.interpreter.get_output_details()

  @property
  def input_names(self) -> list[str]:
    return list(self.inputs)

  def set_inputs(self, arrays: dict):
    missing = set(self.inputs) - set(arrays)
    if missing:
      raise ValueError(f'missing inputs {sorted(missing)}; this graph takes {self.input_names}')
    for name, detail in self.inputs.items():
      array = np.asarray(arrays[name], np.float32)
      if array.shape != tuple(detail['shape']):
        raise ValueError(f'input {name} must have shape {tuple(int(n) for n in detail["shape"])}, got {array.shape}')
      self.interpreter.set_tensor(detail['index'], array)

  def __call__(self, arrays: dict) -> list:
    self.set_inputs(arrays)
    self.interpreter.invoke()
    return [self.interpreter.get_tensor(d['index']).copy() for d in self.outputs]


def latency_ms(model: bytes, num_threads: int, runs: int, warmup: int = 3) -> float:
  """Median wall time of one invoke, in milliseconds (zero inputs; interpreter with num_threads)."""
  graph = TFLiteGraph(model, num_threads)
  graph.set_inputs({name: np.zeros(d['shape'], np.float32) for name, d in graph.inputs.items()})
  for _ in range(warmup):
    graph.interpreter.invoke()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    graph.interpreter.invoke()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)

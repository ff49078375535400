"""Running an exported graph on LiteRT's own GPU accelerator: its verdict on delegation, its FP16 numerics.

  model.tflite + inputs --subprocess: CompiledModel(GPU | CPU, enforce_f32 or not)--> GpuRun:
      available (a GPU adapter was found), fully_accelerated, the ops the runtime left to the CPU and why
      (its own log lines), outputs, latency

`ai-edge-litert` ships LiteRT's GPU accelerator over WebGPU (ML Drift kernels; Dawn inside opens
libvulkan.so.1). Any Vulkan driver serves it; on a machine without a GPU, Mesa's lavapipe does (Debian 12:
`libvulkan1` and `mesa-vulkan-drivers` from bookworm-backports, 25.x; the 22.x of Debian 12 itself finds
"No adapters found"). With `enforce_f32=False` it computes in FP16 as a phone GPU allowed to lose
precision does. It is not the phone's OpenCL delegate and lavapipe's speed says nothing about a phone's.

Each run is a child process: the runtime logs to the process's stderr from C++ (the only place that names
the ops it rejects and why), and a crash inside a driver must not take the export down with it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

PRECISIONS = ('fp16', 'fp32')  # fp16: enforce_f32=False (precision loss allowed), fp32: enforce_f32=True
_ADAPTER = re.compile(r'Selected adapter: (.*)')
_PARTITION = re.compile(r'(\d+) operations will run on the GPU, and the remaining (\d+) operations will run on the CPU')
_NONE_ON_GPU = re.compile(r'No operations will run on the GPU, and all (\d+) operations will run on the CPU')
VULKAN_HINT = ('LiteRT\'s GPU accelerator needs a Vulkan driver: on Debian 12 `apt-get install libvulkan1` and '
               '`apt-get install -t bookworm-backports mesa-vulkan-drivers` (Mesa >= 23; its lavapipe is a CPU '
               'driver and serves), on Debian 13 or Ubuntu 24.04 both from the main suite')
_NO_ADAPTER = ('No adapters found', 'Found no drivers', 'vkCreateInstance failed', 'libvulkan')


@dataclasses.dataclass
class GpuRun:
  """One model on the accelerator at one precision. `available` is False when no GPU adapter was found
  (then `reason` says why and nothing else is set)."""
  precision: str
  available: bool
  reason: str = ''
  adapter: str = ''
  fully_accelerated: bool | None = None
  cpu_ops: list = dataclasses.field(default_factory=list)    # the runtime's lines: 'GATHER: reason'
  partition: dict | None = None                               # {'gpu_ops': n, 'cpu_ops': m} when split
  outputs: list | None = None                                 # per call: [array per output]
  latency_ms: float | None = None
  run_error: str = ''                                         # compiled, but running it failed

  def to_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out.pop('outputs')
    return out


def _parse_log(log: str) -> dict:
  adapter = _ADAPTER.search(log)
  cpu_ops, collecting = [], False
  for line in log.splitlines():
    if 'Following operations are not supported by GPU delegate' in line:
      collecting = True
      continue
    if collecting:
      if _PARTITION.search(line) or _NONE_ON_GPU.search(line) or not re.match(r'^[A-Z_0-9]+:', line):
        collecting = False
      else:
        cpu_ops.append(line.strip())
  partition, none_on_gpu = _PARTITION.search(log), _NONE_ON_GPU.search(log)
  if partition:
    partition = dict(gpu_ops=int(partition.group(1)), cpu_ops=int(partition.group(2)))
  elif none_on_gpu:
    partition = dict(gpu_ops=0, cpu_ops=int(none_on_gpu.group(1)))
  return dict(adapter=adapter.group(1).strip() if adapter else '', cpu_ops=cpu_ops, partition=partition)


def _unavailable_reason(log: str) -> str:
  hits = [line.strip() for line in log.splitlines() if any(key in line for key in _NO_ADAPTER)]
  return hits[0] if hits else 'no GPU adapter was selected'


def run_model(model: bytes, inputs: list, precisions=PRECISIONS, latency_runs: int = 0,
        timeout_s: float = 900.0) -> dict[str, GpuRun]:
  """{precision: GpuRun}: `model` compiled for the GPU accelerator at each precision, run once per entry of
  `inputs` (each a list of arrays, one per model input, in signature order), then `latency_runs` more runs of
  the first entry timed (median of run + output read: the run returns before the GPU is done). One child
  process for all precisions."""
  for precision in precisions:
    if precision not in PRECISIONS:
      raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
  with tempfile.TemporaryDirectory(prefix='bilayer-litert-gpu-') as scratch:
    scratch = pathlib.Path(scratch)
    (scratch / 'model.tflite').write_bytes(model)
    np.savez(scratch / 'inputs.npz', **{f'{c}_{i}': np.asarray(x) for c, call in enumerate(inputs)
                                       for i, x in enumerate(call)})
    command = [sys.executable, '-m', 'bilayer_jax.export.litert_gpu', str(scratch), '--calls', str(len(inputs)),
               '--latency-runs', str(latency_runs), '--precisions', *precisions]
    try:
      child = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
      reason = f'the GPU run did not finish within {timeout_s:.0f} s'
      return {p: GpuRun(p, False, reason=reason) for p in precisions}
    runs = {}
    for precision in precisions:
      log = (scratch / f'{precision}.log').read_text() if (scratch / f'{precision}.log').exists() else child.stderr
      parsed = _parse_log(log)
      result_file = scratch / f'{precision}.json'
      if not result_file.exists():
        if not parsed['adapter']:
          runs[precision] = GpuRun(precision, False, reason=_unavailable_reason(log + child.stderr))
          continue
        tail = ' | '.join(line.strip() for line in (log + child.stderr).splitlines()[-4:])
        raise RuntimeError(f'LiteRT GPU run ({precision}) failed (exit {child.returncode}): {tail}')
      result = json.loads(result_file.read_text())
      outputs = None
      if 'run_error' not in result:
        with np.load(scratch / f'{precision}.npz') as saved:
          outputs = [[saved[f'{c}_{o}'] for o in range(result['num_outputs'])] for c in range(len(inputs))]
      # is_fully_accelerated() has said True for a graph whose log listed rejected ops (a 5-D RESHAPE):
      # the log's list counts too.
      accelerated = result['fully_accelerated'] and not parsed['cpu_ops'] and not parsed['partition']
      runs[precision] = GpuRun(precision, True, adapter=parsed['adapter'], fully_accelerated=accelerated,
                               cpu_ops=parsed['cpu_ops'], partition=parsed['partition'], outputs=outputs,
                               latency_ms=result.get('latency_ms'), run_error=result.get('run_error', ''))
  return runs


def probe_model() -> bytes:
  """A one-op .tflite (ADD of an input to itself), built with the flatbuffer schema: no TensorFlow needed."""
  import flatbuffers

  from bilayer_jax.export.gpu_compat import _schema

  s = _schema()
  model = s.ModelT()
  model.version = 3
  code = s.OperatorCodeT()
  code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.ADD
  code.version = 1
  model.operatorCodes = [code]
  model.buffers = [s.BufferT(), s.BufferT(), s.BufferT()]
  tensors = []
  for index, name in enumerate((b'x', b'y')):
    tensor = s.TensorT()
    tensor.shape, tensor.type, tensor.buffer, tensor.name = [1, 4, 4, 4], s.TensorType.FLOAT32, index + 1, name
    tensors.append(tensor)
  op = s.OperatorT()
  op.opcodeIndex, op.inputs, op.outputs = 0, [0, 0], [1]
  op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.AddOptions, s.AddOptionsT()
  graph = s.SubGraphT()
  graph.tensors, graph.inputs, graph.outputs, graph.operators = tensors, [0], [1], [op]
  model.subgraphs = [graph]
  builder = flatbuffers.Builder(1024)
  builder.Finish(model.Pack(builder), file_identifier=b'TFL3')
  return bytes(builder.Output())


def unavailable_reason() -> str:
  """'' when LiteRT's GPU accelerator finds an adapter and runs a one-op graph on it, else why not."""
  try:
    run = run_model(probe_model(), [[np.ones((1, 4, 4, 4), np.float32)]], precisions=('fp16',), timeout_s=300)['fp16']
  except (ImportError, RuntimeError) as e:
    return str(e)
  return '' if run.available and run.fully_accelerated else (run.reason or 'the one-op probe was not accelerated')


def _worker(scratch: pathlib.Path, precision: str, calls: int, latency_runs: int) -> None:
  """In the child: compile at one precision, run, write PRECISION.json and PRECISION.npz."""
  from ai_edge_litert.compiled_model import CompiledModel
  from ai_edge_litert.hardware_accelerator import HardwareAccelerator
  from ai_edge_litert.options import CpuOptions, GpuOptions, Options

  options = Options(hardware_accelerators=HardwareAccelerator.GPU | HardwareAccelerator.CPU,
                    cpu_options=CpuOptions(num_threads=1),
                    gpu_options=GpuOptions(enforce_f32=precision == 'fp32'))
  model = CompiledModel.from_file(str(scratch / 'model.tflite'), options=options)
  verdict = dict(fully_accelerated=bool(model.is_fully_accelerated()))
  try:
    verdict.update(_run_compiled(model, scratch, precision, calls, latency_runs))
  except (ValueError, RuntimeError) as e:  # e.g. an input dtype the buffers do not take (int64)
    verdict['run_error'] = f'{type(e).__name__}: {e}'
  (scratch / f'{precision}.json').write_text(json.dumps(verdict))


def _run_compiled(model, scratch: pathlib.Path, precision: str, calls: int, latency_runs: int) -> dict:
  inputs, outputs = model.create_input_buffers(0), model.create_output_buffers(0)
  details = [buffer.get_tensor_details() for buffer in outputs]
  dtypes = [np.dtype(d['dtype']) for d in details]
  shapes = [tuple(d['shape']) for d in details]

  def call(arrays):
    for buffer, array in zip(inputs, arrays):
      buffer.write(np.ascontiguousarray(array))
    model.run_by_index(0, inputs, outputs)
    return [buffer.read(int(np.prod(shape)), dtype).reshape(shape)
            for buffer, dtype, shape in zip(outputs, dtypes, shapes)]

  with np.load(scratch / 'inputs.npz') as saved:
    per_call = [[saved[k] for k in sorted((k for k in saved.files if k.startswith(f'{c}_')),
                                          key=lambda k: int(k.split('_')[1]))] for c in range(calls)]
  results = [call(arrays) for arrays in per_call]
  times = []
  for _ in range(latency_runs):
    start = time.perf_counter()
    call(per_call[0])
    times.append(time.perf_counter() - start)
  np.savez(scratch / f'{precision}.npz',
           **{f'{c}_{o}': out for c, outs in enumerate(results) for o, out in enumerate(outs)})
  return dict(num_outputs=len(outputs), latency_ms=1e3 * statistics.median(times) if times else None)


@contextlib.contextmanager
def _stderr_to(path: pathlib.Path):
  """The C++ runtime writes to file descriptor 2: point it at `path` for the duration."""
  sys.stderr.flush()
  saved = os.dup(2)
  with open(path, 'w') as f:
    os.dup2(f.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description='(internal) the child process of litert_gpu.run_model')
  parser.add_argument('scratch', type=pathlib.Path)
  parser.add_argument('--precisions', nargs='+', choices=PRECISIONS, required=True)
  parser.add_argument('--calls', type=int, required=True)
  parser.add_argument('--latency-runs', type=int, default=0)
  args = parser.parse_args(argv)
  for precision in args.precisions:
    # Each compilation's log apart: the delegate's verdict is printed once per compiled model.
    with _stderr_to(args.scratch / f'{precision}.log'):
      _worker(args.scratch, precision, args.calls, args.latency_runs)
  return 0


if __name__ == '__main__':
  sys.exit(main())

"""Edits of a converted .tflite flatbuffer that the TFLite converter has no option for (export, step 2c).

  model_fp16.tflite --gather_tables_in_float32--> the same graph, its GATHER tables stored as FLOAT32
  model_fp16.tflite --small_constants_in_float32(+ the FP32 file)--> its per-channel vectors in FLOAT32

Why: the FP16 converter stores every float constant as FLOAT16 behind a DEQUANTIZE op. A GPU delegate skips
those DEQUANTIZE ops and reads the FP16 constants directly, which is right for convolution weights but not
for the table a GATHER reads (the warp's texture): LiteRT's GPU accelerator then sees a GATHER with an FP16
input and an FP32 output, rejects it ("GATHER: Input / output dtype mismatch"), and the graph splits into
GPU and CPU parts (measured: 88 of 155 ops on the GPU for the demo model). The converter has no FP16
variant of GATHER (a float16 `tf.gather` needs Flex ops) and no per-constant opt-out, so the table's
DEQUANTIZE is removed here and its output becomes a FLOAT32 constant holding the same values.

Small constants (biases, folded BatchNorm scales and shifts) are kept in float32 for accuracy: at the paper
size with the authors' kind of weights, rounding one of them to float16 alone costs the image as little as
48.8 dB (block 0's folded BatchNorm scale), and all 10,342 of them together take the frame from 42.1 to
39.9 dB (JAX, all else float16). Float32 costs them 2 bytes per value, 20 KB of 12.5 MB. Which large
constants also stay float32 is measured (mixed_precision.py).
"""
from __future__ import annotations

import numpy as np

from bilayer_jax.export.gpu_compat import _schema

# Biases and folded BatchNorm vectors (up to 4096 channels): kept in float32 in every FP16 file.
SMALL_CONSTANT_ELEMENTS = 4096


def _builtin_codes(model) -> list[int]:
  # Builtin codes past 127 live in builtinCode; older files keep small ones in deprecatedBuiltinCode.
  return [max(code.builtinCode, code.deprecatedBuiltinCode) for code in model.operatorCodes]


def _dequantized_fp16_constants(model, schema, subgraph):
  """{DEQUANTIZE op index: (FP16 source tensor, FLOAT32 output tensor)} for DEQUANTIZEs of FP16 constants."""
  codes = _builtin_codes(model)
  found = {}
  for index, op in enumerate(subgraph.operators):
    if codes[op.opcodeIndex] != schema.BuiltinOperator.DEQUANTIZE:
      continue
    source, target = subgraph.tensors[int(op.inputs[0])], subgraph.tensors[int(op.outputs[0])]
    buffer = model.buffers[source.buffer]
    if source.type == schema.TensorType.FLOAT16 and buffer.data is not None and len(buffer.data):
      found[index] = (source, target)
  return found


def _store_float32(model, source, target, values: np.ndarray) -> None:
  """The DEQUANTIZE's output tensor becomes a FLOAT32 constant holding values (in the FP16 tensor's buffer)."""
  buffer = model.buffers[source.buffer]
  buffer.data = np.frombuffer(np.ascontiguousarray(values, np.float32).tobytes(), np.uint8)
  # Buffer 0 is the flatbuffer's empty buffer: the FP16 tensor stays, unused and without data.
  target.buffer, source.buffer = source.buffer, 0


def _pack(model, size_hint: int) -> bytes:
  import flatbuffers

  builder = flatbuffers.Builder(size_hint + 1024)
  builder.Finish(model.Pack(builder), file_identifier=b'TFL3')
  return bytes(builder.Output())


def _float32_constants(model, schema) -> dict:
  """{(shape, float16 bytes): [float32 values, ...]} of every FLOAT32 constant of an FP32 file."""
  found = {}
  for subgraph in model.subgraphs:
    for tensor in subgraph.tensors:
      buffer = model.buffers[tensor.buffer]
      if tensor.type == schema.TensorType.FLOAT32 and buffer.data is not None and len(buffer.data):
        values = np.frombuffer(bytes(buffer.data), np.float32)
        key = (tuple(int(d) for d in tensor.shape), values.astype(np.float16).tobytes())
        found.setdefault(key, []).append(values)
  return found


def float16_constants(fp16_data: bytes) -> list[tuple[int, tuple]]:
  """(position, shape) of every FP16 constant behind a DEQUANTIZE, position counted over the file in op order:
  the names constants_in_float32's `select` sees."""
  schema = _schema()
  model = schema.ModelT.InitFromPackedBuf(bytearray(fp16_data), 0)
  found = []
  for subgraph in model.subgraphs:
    for source, _ in _dequantized_fp16_constants(model, schema, subgraph).values():
      found.append((len(found), tuple(int(d) for d in source.shape)))
  return found


def constants_in_float32(fp16_data: bytes, fp32_data: bytes, select) -> tuple[bytes, int, int]:
  """(new FP16 .tflite bytes, constants restored, selected constants left in float16).

  fp32_data: the FP32 conversion of the same tf.function. select(position, shape) -> bool picks FP16
  constants (see float16_constants); each picked one is replaced by the FP32 file's constant of the same
  shape whose float16 rounding it is (its DEQUANTIZE op removed). A constant with no such match, or with two
  different float32 originals, stays float16 and is counted: the graph computes the same function either
  way, only closer to the FP32 file."""
  schema = _schema()
  model = schema.ModelT.InitFromPackedBuf(bytearray(fp16_data), 0)
  originals = _float32_constants(schema.ModelT.InitFromPackedBuf(bytearray(fp32_data), 0), schema)
  restored = unmatched = position = 0
  for subgraph in model.subgraphs:
    removed = set()
    for index, (source, target) in _dequantized_fp16_constants(model, schema, subgraph).items():
      shape = tuple(int(d) for d in source.shape)
      position += 1
      if not select(position - 1, shape):
        continue
      candidates = originals.get((shape, bytes(model.buffers[source.buffer].data)), [])
      if not candidates or any(not np.array_equal(c, candidates[0]) for c in candidates[1:]):
        unmatched += 1
        continue
      _store_float32(model, source, target, candidates[0])
      removed.add(index)
      restored += 1
    subgraph.operators = [op for i, op in enumerate(subgraph.operators) if i not in removed]
  if not restored:
    return fp16_data, 0, unmatched
  return _pack(model, len(fp16_data)), restored, unmatched


def small_constants_in_float32(fp16_data: bytes, fp32_data: bytes, max_elements: int = SMALL_CONSTANT_ELEMENTS
                               ) -> tuple[bytes, int, int]:
  """constants_in_float32 of every FP16 constant of at most max_elements values."""
  return constants_in_float32(fp16_data, fp32_data,
                              lambda position, shape: int(np.prod(shape, dtype=np.int64)) <= max_elements)


def gather_tables_in_float32(data: bytes) -> tuple[bytes, int]:
  """(new .tflite bytes, number of tables changed): every GATHER whose table is a DEQUANTIZE of an FP16
  constant reads the FLOAT32 values instead (the FP16 values widened exactly; the DEQUANTIZE op removed).
  The graph's function is unchanged; the file grows by 2 bytes per table element."""
  schema = _schema()
  model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
  codes = _builtin_codes(model)
  changed = 0
  for subgraph in model.subgraphs:
    tables = {int(op.inputs[0]) for op in subgraph.operators
              if codes[op.opcodeIndex] == schema.BuiltinOperator.GATHER}
    removed = set()
    for index, (source, target) in _dequantized_fp16_constants(model, schema, subgraph).items():
      if int(subgraph.operators[index].outputs[0]) in tables:
        values = np.frombuffer(bytes(model.buffers[source.buffer].data), np.float16).astype(np.float32)
        _store_float32(model, source, target, values)
        removed.add(index)
        changed += 1
    subgraph.operators = [op for i, op in enumerate(subgraph.operators) if i not in removed]
  if not changed:
    return data, 0
  return _pack(model, len(data)), changed

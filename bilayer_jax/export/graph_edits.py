"""Edits of a converted .tflite flatbuffer that the TFLite converter has no option for (export, step 2c).

  model_fp16.tflite --gather_tables_in_float32--> the same graph, its GATHER tables stored as FLOAT32

Why: the FP16 converter stores every float constant as FLOAT16 behind a DEQUANTIZE op. A GPU delegate skips
those DEQUANTIZE ops and reads the FP16 constants directly, which is right for convolution weights but not
for the table a GATHER reads (the warp's texture): LiteRT's GPU accelerator then sees a GATHER with an FP16
input and an FP32 output, rejects it ("GATHER: Input / output dtype mismatch"), and the graph splits into
GPU and CPU parts (measured: 88 of 155 ops on the GPU for the demo model). The converter has no FP16
variant of GATHER (a float16 `tf.gather` needs Flex ops) and no per-constant opt-out, so the table's
DEQUANTIZE is removed here and its output becomes a FLOAT32 constant holding the same values.
"""
from __future__ import annotations

import numpy as np

from bilayer_jax.export.gpu_compat import _schema


def _builtin_codes(model) -> list[int]:
  # Builtin codes past 127 live in builtinCode; older files keep small ones in deprecatedBuiltinCode.
  return [max(code.builtinCode, code.deprecatedBuiltinCode) for code in model.operatorCodes]


def gather_tables_in_float32(data: bytes) -> tuple[bytes, int]:
  """(new .tflite bytes, number of tables changed): every GATHER whose table is a DEQUANTIZE of an FP16
  constant reads the FLOAT32 values instead (the FP16 values widened exactly; the DEQUANTIZE op removed).
  The graph's function is unchanged; the file grows by 2 bytes per table element."""
  import flatbuffers

  schema = _schema()
  model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
  codes = _builtin_codes(model)
  changed = 0
  for subgraph in model.subgraphs:
    tables = {int(op.inputs[0]) for op in subgraph.operators
              if codes[op.opcodeIndex] == schema.BuiltinOperator.GATHER}
    kept = []
    for op in subgraph.operators:
      if codes[op.opcodeIndex] == schema.BuiltinOperator.DEQUANTIZE and int(op.outputs[0]) in tables:
        source, target = subgraph.tensors[int(op.inputs[0])], subgraph.tensors[int(op.outputs[0])]
        buffer = model.buffers[source.buffer]
        if source.type == schema.TensorType.FLOAT16 and buffer.data is not None and len(buffer.data):
          values = np.frombuffer(bytes(buffer.data), np.float16).astype(np.float32)
          buffer.data = np.frombuffer(values.tobytes(), np.uint8)
          # Buffer 0 is the flatbuffer's empty buffer: the FP16 tensor stays, unused and without data.
          target.buffer, source.buffer = source.buffer, 0
          changed += 1
          continue
      kept.append(op)
    subgraph.operators = kept
  if not changed:
    return data, 0
  builder = flatbuffers.Builder(len(data) + 1024)
  builder.Finish(model.Pack(builder), file_identifier=b'TFL3')
  return bytes(builder.Output()), changed

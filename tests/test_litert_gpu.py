"""LiteRT's GPU accelerator as the judge of a graph (bilayer_jax.export.litert_gpu), and the FP16 file edit
that its verdict led to (graph_edits.gather_tables_in_float32), and the FP16 file's small constants kept in
float32 (graph_edits.small_constants_in_float32).

The accelerator tests need a Vulkan driver (`gpu_accelerator` fixture): CI installs lavapipe and fails
without it; elsewhere they are skipped with what to install.
"""
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')

from bilayer_jax.export import convert, gpu_compat, graph_edits, interpreter, litert_gpu  # noqa: E402

TABLE = np.random.default_rng(0).standard_normal((512, 6)).astype(np.float32)
# Whole numbers: a float index is exact in FP16 only as an integer below 2048 (warp.py).
POSITIONS = np.floor(np.random.default_rng(1).uniform(0, 511, (1, 256))).astype(np.float32)


def gather_graph(x):
  # Float positions -> CAST -> 1-D INT32 indices -> GATHER of a constant table: the warp's pattern.
  indices = tf.cast(tf.reshape(x, [-1]), tf.int32)
  return tf.reshape(tf.gather(tf.constant(TABLE), indices), [1, 16, 16, 6]) * 2.0 + 1.0


def converted_fp16() -> bytes:
  """The FP16 conversion as the TFLite converter writes it (before our edit)."""
  function = tf.function(gather_graph, input_signature=[tf.TensorSpec((1, 256), tf.float32)], autograph=False)
  converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], function)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.target_spec.supported_types = [tf.float16]
  return bytes(converter.convert())


def cpu_run(model: bytes) -> np.ndarray:
  runner = interpreter.interpreter_backend()[1](model_content=model)
  runner.allocate_tensors()
  runner.set_tensor(runner.get_input_details()[0]['index'], POSITIONS)
  runner.invoke()
  return runner.get_tensor(runner.get_output_details()[0]['index'])


def test_gather_table_edit_keeps_the_function_and_passes_the_rules():
  original = converted_fp16()
  ops = gpu_compat.op_histogram(original)
  assert ops.get('DEQUANTIZE', 0) >= 1 and ops['GATHER'] == 1
  verdict = gpu_compat.check(original)
  assert not verdict.compatible and 'DEQUANTIZE of an FP16 constant' in verdict.summary()
  edited, changed = graph_edits.gather_tables_in_float32(original)
  assert changed == 1
  assert gpu_compat.check(edited).compatible, gpu_compat.check(edited).summary()
  table = next(op for op in gpu_compat.read_model(edited) if op.name == 'GATHER').inputs[0]
  assert table.dtype == 'FLOAT32' and table.is_const and table.shape == TABLE.shape
  # The same values as the interpreter's DEQUANTIZE of the FP16 table: outputs are bit-identical.
  np.testing.assert_array_equal(cpu_run(edited), cpu_run(original))
  want = TABLE.astype(np.float16).astype(np.float32)[POSITIONS.astype(np.int32).ravel()].reshape(1, 16, 16, 6)
  np.testing.assert_allclose(cpu_run(edited), want * 2.0 + 1.0, rtol=1e-3)
  # Nothing else to change in a file without such a table: the bytes come back as they were.
  again, changed = graph_edits.gather_tables_in_float32(edited)
  assert changed == 0 and again == edited


RNG = np.random.default_rng(2)
KERNEL = RNG.standard_normal((3, 3, 8, 64)).astype(np.float32)  # 4608 values
BIAS, SHIFT = RNG.standard_normal((2, 64)).astype(np.float32)
SCALE = RNG.uniform(0.5, 40.0, 64).astype(np.float32)  # a folded BatchNorm scale can reach 40 at the paper size
IMAGE = RNG.standard_normal((1, 8, 8, 8)).astype(np.float32)


def vector_net(x):
  # A folded BatchNorm after the activation: its scale and shift stay vectors of their own in the graph.
  y = tf.nn.leaky_relu(tf.nn.conv2d(x, tf.constant(KERNEL), 1, 'SAME') + tf.constant(BIAS), 0.2)
  return y * tf.constant(SCALE) + tf.constant(SHIFT)


def _convert(fn, fp16: bool) -> bytes:
  from test_gpu_compat import to_tflite
  return bytes(to_tflite(fn, (IMAGE.shape, tf.float32), fp16=fp16))


def _float16_constants(model: bytes) -> list[int]:
  """Element counts of the constants stored as FLOAT16 (each behind its DEQUANTIZE)."""
  return sorted(int(np.prod(op.inputs[0].shape)) for op in gpu_compat.read_model(model)
                if op.name == 'DEQUANTIZE' and op.inputs[0].dtype == 'FLOAT16')


def _run(model: bytes) -> np.ndarray:
  runner = interpreter.interpreter_backend()[1](model_content=model)
  runner.allocate_tensors()
  runner.set_tensor(runner.get_input_details()[0]['index'], IMAGE)
  runner.invoke()
  return runner.get_tensor(runner.get_output_details()[0]['index'])


def test_small_constants_of_the_fp16_file_get_their_float32_values_back():
  fp16, fp32 = _convert(vector_net, True), _convert(vector_net, False)
  assert _float16_constants(fp16) == [64, 64, 64, KERNEL.size]
  edited, restored, unmatched = graph_edits.small_constants_in_float32(fp16, fp32, max_elements=1000)
  assert (restored, unmatched) == (3, 0)
  assert _float16_constants(edited) == [KERNEL.size]  # above max_elements
  assert gpu_compat.check(edited).compatible
  # The vectors are the float32 originals: the edited file is closer to the FP32 one than the converter's.
  exact, before, after = _run(fp32), _run(fp16), _run(edited)
  rms = lambda x: float(np.sqrt(np.mean((x - exact) ** 2)))
  assert rms(after) < 0.8 * rms(before), (rms(after), rms(before))
  everything, restored_all, _ = graph_edits.small_constants_in_float32(fp16, fp32, max_elements=10 ** 6)
  np.testing.assert_allclose(_run(everything), exact, rtol=1e-5, atol=1e-5)
  assert restored_all == 4 and _float16_constants(everything) == []


def test_small_constants_without_a_float32_original_stay_float16():
  fp16 = _convert(vector_net, True)
  other = _convert(lambda x: tf.nn.conv2d(x, tf.constant(KERNEL), 1, 'SAME') * 2.0 - 1.0, False)
  edited, restored, unmatched = graph_edits.small_constants_in_float32(fp16, other)
  assert edited == fp16 and restored == 0 and unmatched == 3  # the three vectors


def test_convert_writes_fp16_files_with_float32_gather_tables():
  function = tf.function(gather_graph, input_signature=[tf.TensorSpec((1, 256), tf.float32)], autograph=False)
  model = convert.to_tflite(function, fp16=True)
  assert gpu_compat.check(model).compatible
  assert gpu_compat.op_histogram(converted_fp16())['DEQUANTIZE'] >= 1
  assert 'DEQUANTIZE' not in gpu_compat.op_histogram(model)
  # The table is small enough to be restored from the FP32 conversion: its exact values, not FP16 widened.
  table = next(op for op in gpu_compat.read_model(model) if op.name == 'GATHER').inputs[0]
  assert table.dtype == 'FLOAT32' and table.is_const
  np.testing.assert_allclose(cpu_run(model), gather_graph(POSITIONS).numpy(), rtol=1e-6)


def test_the_accelerator_names_what_it_leaves_to_the_cpu(gpu_accelerator):
  original = converted_fp16()
  runs = litert_gpu.run_model(original, [[POSITIONS]])
  for run in runs.values():
    assert run.available and run.adapter
    assert run.fully_accelerated is False
    assert any(line.startswith('GATHER: Input / output dtype mismatch') for line in run.cpu_ops), run.cpu_ops
    assert run.partition and run.partition['cpu_ops'] >= 1
  edited = graph_edits.gather_tables_in_float32(original)[0]
  runs = litert_gpu.run_model(edited, [[POSITIONS], [POSITIONS[:, ::-1].copy()]], latency_runs=3)
  cpu = cpu_run(edited)
  for precision, run in runs.items():
    assert run.fully_accelerated and not run.cpu_ops and run.partition is None
    assert len(run.outputs) == 2 and run.outputs[0][0].shape == (1, 16, 16, 6)
    assert run.latency_ms > 0
    # enforce_f32 computes as the CPU does; FP16 arithmetic rounds the multiply-add.
    np.testing.assert_allclose(run.outputs[0][0], cpu, atol=1e-5 if precision == 'fp32' else 2e-2)
  assert not np.allclose(runs['fp32'].outputs[0][0], runs['fp32'].outputs[1][0])  # each call its own input


def test_no_vulkan_driver_is_reported_not_raised(monkeypatch):
  monkeypatch.setenv('VK_ICD_FILENAMES', '/nonexistent/icd.json')  # the loader then finds no driver
  run = litert_gpu.run_model(litert_gpu.probe_model(), [[np.ones((1, 4, 4, 4), np.float32)]],
                             precisions=('fp16',))['fp16']
  assert not run.available and run.reason and run.outputs is None
  assert litert_gpu.unavailable_reason()


def test_parse_log_reads_the_runtimes_verdict():
  log = ('I0000 environment.cc:532] Selected adapter: llvmpipe (LLVM 15.0.6, 256 bits), backend=Vulkan\n'
         'ERROR: Following operations are not supported by GPU delegate:\n'
         'DEQUANTIZE: \nGATHER: Input / output dtype mismatch.\n'
         '88 operations will run on the GPU, and the remaining 67 operations will run on the CPU.\n'
         'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n')
  parsed = litert_gpu._parse_log(log)
  assert parsed['adapter'].startswith('llvmpipe')
  assert parsed['cpu_ops'] == ['DEQUANTIZE:', 'GATHER: Input / output dtype mismatch.']
  assert parsed['partition'] == dict(gpu_ops=88, cpu_ops=67)
  none = litert_gpu._parse_log('ERROR: Following operations are not supported by GPU delegate:\n'
                               'GATHER: Only accept INT32 indices\n'
                               'No operations will run on the GPU, and all 1 operations will run on the CPU.')
  assert none['cpu_ops'] == ['GATHER: Only accept INT32 indices'] and none['partition'] == dict(gpu_ops=0, cpu_ops=1)


# ----------------------------------------------------------------------------------------------------
# Our static rules (gpu_compat) against the runtime's verdict, on the graphs of test_gpu_compat.

def _rule_cases():
  import test_gpu_compat as rules

  f32 = tf.float32
  cases = {name: (fn, specs) for name, (fn, specs, _, _) in rules.BAD.items()}
  cases.update({
      'conv_net_fp16': (rules.conv_net, [((1, 8, 8, 4), f32)]),
      'gather_1d': (lambda i: tf.gather(tf.constant(rules.TABLE), i), [((5,), tf.int32)]),
      'cmp_cast_each': (lambda x: x * tf.cast(x >= 0.0, f32) * tf.cast(x <= 3.0, f32), [((1, 4, 4, 2), f32)]),
      'runtime_channel_scale': (lambda a, b: a * b, [((1, 4, 4, 3), f32), ((1, 1, 1, 3), f32)]),
      # Rejected by our rules, accelerated by LiteRT's WebGPU accelerator (RULES_STRICTER_THAN_THE_RUNTIME):
      'add_4d_with_hc': (lambda a, b: a + b, [((1, 4, 4, 3), f32), ((4, 3), f32)]),
      'int32_arithmetic': (lambda x: tf.gather(tf.constant(rules.TABLE), tf.cast(x, tf.int32) * 2 + 1),
                           [((5,), f32)]),
      'logical_and_of_comparisons': (lambda x: x * tf.cast(tf.logical_and(x >= 0.0, x <= 3.0), f32),
                                     [((1, 4, 4, 2), f32)]),
      'comparison_as_output': (lambda x: tf.cast(x >= 0.0, f32), [((1, 4, 4, 2), f32)]),
  })
  return rules.to_tflite, cases


# Where our rules stay stricter on purpose: they restate the phone's GPU delegate (model_builder.cc: only
# float tensors, with INT32 only into GATHER and BOOL only from a comparison straight into one CAST/SELECT;
# the standard broadcast rule), which the WebGPU accelerator here does not share. docs/export.md lists them.
RULES_STRICTER_THAN_THE_RUNTIME = {'add_4d_with_hc', 'int32_arithmetic', 'logical_and_of_comparisons',
                                   'comparison_as_output'}
CASES = ('broadcast_to', 'gather_nd', 'gather_2d_indices', 'gather_int64_indices', 'shrink_axis_slice',
         'reshape_to_5d', 'conv_net_fp16', 'gather_1d', 'cmp_cast_each', 'runtime_channel_scale',
         *sorted(RULES_STRICTER_THAN_THE_RUNTIME))


@pytest.mark.parametrize('case', CASES)
def test_static_rules_agree_with_the_runtime(case, gpu_accelerator):
  to_tflite, cases = _rule_cases()
  fn, specs = cases[case]
  model = to_tflite(fn, *specs, fp16=case.endswith('fp16'))
  rng = np.random.default_rng(0)
  inputs = [[rng.integers(0, 3, s).astype(d.as_numpy_dtype) if d.is_integer else rng.uniform(0, 3, s).astype(np.float32)
             for s, d in specs]]
  run = litert_gpu.run_model(model, inputs, precisions=('fp32',))['fp32']
  static = gpu_compat.check(model).compatible
  if case in RULES_STRICTER_THAN_THE_RUNTIME:
    assert not static and run.fully_accelerated, (
        f'{case}: the runtime now rejects it too ({run.cpu_ops}): remove it from RULES_STRICTER_THAN_THE_RUNTIME')
  else:
    assert static == run.fully_accelerated, (case, gpu_compat.check(model).summary(), run.cpu_ops)
    assert static or run.cpu_ops  # a rejection comes with the runtime's reason

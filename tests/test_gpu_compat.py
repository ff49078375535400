"""The GPU-delegate rule check (bilayer_jax.export.gpu_compat) on small TF graphs converted to TFLite.

Each case is a real conversion by TF 2.21's TFLiteConverter, so the tests also pin which TF code
produces which TFLite op (GATHER_ND, BROADCAST_TO, shrink-axis STRIDED_SLICE, ...).
"""
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')

from bilayer_jax.export import gpu_compat  # noqa: E402

RNG = np.random.default_rng(0)
KERNEL = RNG.standard_normal((3, 3, 4, 8)).astype(np.float32)
TABLE = RNG.standard_normal((16, 3)).astype(np.float32)


def to_tflite(fn, *specs, fp16=False, flex=False):
  function = tf.function(fn, input_signature=[tf.TensorSpec(s, d) for s, d in specs], autograph=False)
  converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], function)
  if flex:
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
  if fp16:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
  return converter.convert()


def conv_net(x):
  y = tf.nn.leaky_relu(tf.nn.conv2d(x, tf.constant(KERNEL), 1, 'SAME') + 0.5, 0.2)
  y = tf.image.resize(y, (16, 16), method='nearest')
  return tf.concat([y[..., 0:3], tf.tanh(y[..., 3:8])], axis=-1)


F32 = tf.float32


@pytest.mark.parametrize('fp16', [False, True])
def test_a_conv_net_is_compatible(fp16):
  model = to_tflite(conv_net, ((1, 8, 8, 4), F32), fp16=fp16)
  verdict = gpu_compat.check(model)
  assert verdict.compatible, verdict.summary()
  assert verdict.histogram['CONV_2D'] == 1 and verdict.histogram['RESIZE_NEAREST_NEIGHBOR'] == 1
  if fp16:  # FP16 weights arrive through DEQUANTIZE, which the delegate folds as a constant
    assert verdict.histogram.get('DEQUANTIZE', 0) >= 1
  ops = gpu_compat.read_model(model)
  conv = next(op for op in ops if op.name == 'CONV_2D')
  assert conv.inputs[0].shape == (1, 8, 8, 4) and conv.outputs[0].shape == (1, 8, 8, 8)
  assert conv.options['strideH'] == 1 and len(conv.runtime_inputs) == 1


def test_gather_with_1d_int32_indices_is_compatible():
  verdict = gpu_compat.check(to_tflite(lambda i: tf.gather(tf.constant(TABLE), i), ((5,), tf.int32)))
  assert verdict.compatible and verdict.histogram == {'GATHER': 1}


BAD = {
    'gather_nd': (lambda i: tf.gather_nd(tf.constant(TABLE), i), [((5, 1), tf.int32)],
                  'GATHER_ND', 'not supported'),
    'broadcast_to': (lambda x: tf.broadcast_to(x, (1, 4, 4, 3)), [((1, 1, 4, 3), F32)],
                     'BROADCAST_TO', 'not supported'),
    'reshape_to_5d': (lambda x: tf.reshape(tf.reshape(x, (1, 2, 2, 4, 8)) * tf.constant(
        RNG.standard_normal((1, 2, 2, 4, 8)).astype(np.float32)), (1, 4, 4, 8)), [((1, 4, 4, 8), F32)],
                      'MUL', '5-D'),
    'shrink_axis_slice': (lambda x: x[:, :, :, 0] * 2.0, [((1, 4, 4, 3), F32)],
                          'STRIDED_SLICE', 'shrinkAxisMask'),
    'gather_2d_indices': (lambda i: tf.gather(tf.constant(TABLE), i), [((4, 4), tf.int32)],
                          'GATHER', 'indices must be 1-D'),
    'gather_int64_indices': (lambda i: tf.gather(tf.constant(TABLE), i), [((4,), tf.int64)],
                             'GATHER', 'INT32'),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_known_bad_graphs_are_flagged(case):
  fn, specs, op_name, reason = BAD[case]
  verdict = gpu_compat.check(to_tflite(fn, *specs))
  assert not verdict.compatible
  hits = [v for v in verdict.violations if v.op_name == op_name and reason in v.reason]
  assert hits, verdict.summary()
  assert op_name in verdict.summary() and verdict.to_dict()['violations']


def test_flex_ops_are_flagged():
  verdict = gpu_compat.check(to_tflite(lambda x: tf.math.cumprod(x, axis=1), ((1, 4), F32), flex=True))
  assert not verdict.compatible
  assert [v.op_name for v in verdict.violations] == ['FlexCumprod']
  assert 'select-ops runtime' in verdict.violations[0].reason


def _repack(model: bytes, edit) -> bytes:
  """The model with edit(ModelT) applied: how the tests make ops the converter does not emit."""
  import flatbuffers
  schema = gpu_compat._schema()
  m = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
  edit(m, schema)
  builder = flatbuffers.Builder(1024)
  builder.Finish(m.Pack(builder), file_identifier=b'TFL3')
  return bytes(builder.Output())


def _as_custom(name):
  def edit(m, schema):
    code = m.operatorCodes[m.subgraphs[0].operators[0].opcodeIndex]
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = name
    m.subgraphs[0].operators[0].builtinOptionsType = 0
    m.subgraphs[0].operators[0].builtinOptions = None
  return edit


def test_custom_ops_only_the_delegates_own():
  # Two runtime inputs, one output: the shape of a Resampler call (image, warp).
  model = to_tflite(lambda a, b: a - b, ((1, 4, 4, 2), F32), ((1, 4, 4, 2), F32))
  assert gpu_compat.check(model).compatible
  assert gpu_compat.check(_repack(model, _as_custom('Resampler'))).compatible
  verdict = gpu_compat.check(_repack(model, _as_custom('MyWarp')))
  assert not verdict.compatible and "custom op 'MyWarp'" in verdict.violations[0].reason


@pytest.mark.parametrize('op_name,version', [('GATHER', 2), ('CONV_2D', 7)])
def test_op_versions_above_the_delegate_parsers_are_flagged(op_name, version):
  model = to_tflite(conv_net, ((1, 8, 8, 4), F32))
  model = to_tflite(lambda i: tf.gather(tf.constant(TABLE), i), ((5,), tf.int32)) if op_name == 'GATHER' else model

  def bump(m, schema):
    for op in m.subgraphs[0].operators:
      code = m.operatorCodes[op.opcodeIndex]
      if max(code.builtinCode, code.deprecatedBuiltinCode) == getattr(schema.BuiltinOperator, op_name):
        code.version = version

  verdict = gpu_compat.check(_repack(model, bump))
  reasons = [v.reason for v in verdict.violations if v.op_name == op_name]
  assert reasons == [f'version {version} is above the {version - 1} the GPU delegate takes']


def test_integer_arithmetic_is_flagged():
  # INT32 may only flow out of CAST and into GATHER: index arithmetic in int32 runs on the CPU.
  model = to_tflite(lambda x: tf.gather(tf.constant(TABLE), tf.cast(x, tf.int32) * 2 + 1), ((5,), F32))
  verdict = gpu_compat.check(model)
  flagged = {v.op_name for v in verdict.violations}
  assert flagged == {'MUL', 'ADD'}, verdict.summary()
  assert all('INT32' in v.reason for v in verdict.violations)
  fine = to_tflite(lambda x: tf.gather(tf.constant(TABLE), tf.cast(x * 2.0 + 1.0, tf.int32)), ((5,), F32))
  assert gpu_compat.check(fine).compatible


def test_comparisons_must_feed_one_cast_to_float():
  def masked(x):
    inside = tf.logical_and(x >= 0.0, x <= 3.0)
    return x * tf.cast(inside, tf.float32)

  def cast_each(x):
    return x * tf.cast(x >= 0.0, tf.float32) * tf.cast(x <= 3.0, tf.float32)

  bad = gpu_compat.check(to_tflite(masked, ((1, 4, 4, 2), F32)))
  assert {v.op_name for v in bad.violations} == {'GREATER_EQUAL', 'LESS_EQUAL'}
  assert 'LOGICAL_AND' in bad.violations[0].reason
  assert gpu_compat.check(to_tflite(cast_each, ((1, 4, 4, 2), F32))).compatible
  as_output = gpu_compat.check(to_tflite(lambda x: tf.cast(x >= 0.0, tf.float32), ((1, 4, 4, 2), F32)))
  assert [v.op_name for v in as_output.violations] == ['CAST']


def test_add_broadcasting_follows_the_standard_rule():
  ok = to_tflite(lambda a, b: a + b, ((1, 4, 4, 3), F32), ((4, 4, 3), F32))   # 4-D with 3-D, batch 1
  per_channel = to_tflite(lambda a: a + tf.constant([1.0, 2.0, 3.0]), ((1, 4, 4, 3), F32))
  bad = to_tflite(lambda a, b: a + b, ((1, 4, 4, 3), F32), ((4, 3), F32))      # 4-D with [h, c]
  assert gpu_compat.check(ok).compatible and gpu_compat.check(per_channel).compatible
  verdict = gpu_compat.check(bad)
  assert not verdict.compatible and 'broadcasting' in verdict.violations[0].reason


def test_not_a_tflite_file():
  with pytest.raises(ValueError, match='not a TFLite flatbuffer'):
    gpu_compat.check(b'\x00' * 64)

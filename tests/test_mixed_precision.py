"""The FP16 file's float32 constants (bilayer_jax.export.mixed_precision): the small ones always, large ones
where the measured accuracy needs them, within the size limit."""
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')

from bilayer_jax.export import accuracy, graph_edits, interpreter, mixed_precision  # noqa: E402

RNG = np.random.default_rng(3)
KERNELS = [(RNG.standard_normal((3, 3, c_in, 64)) / np.sqrt(9 * c_in)).astype(np.float32) for c_in in (8, 64, 64)]
BIASES = [RNG.standard_normal(64).astype(np.float32) for _ in KERNELS]
IMAGES = RNG.standard_normal((3, 1, 8, 8, 8)).astype(np.float32)


def net(x):
  for kernel, bias in zip(KERNELS, BIASES):
    x = tf.nn.leaky_relu(tf.nn.conv2d(x, tf.constant(kernel), 1, 'SAME') + tf.constant(bias), 0.2)
  return x


def convert(fp16: bool) -> bytes:
  from test_gpu_compat import to_tflite
  return bytes(to_tflite(net, (IMAGES.shape[1:], tf.float32), fp16=fp16))


def outputs(model: bytes) -> np.ndarray:
  runner = interpreter.interpreter_backend()[1](model_content=model)
  runner.allocate_tensors()
  result = []
  for image in IMAGES:
    runner.set_tensor(runner.get_input_details()[0]['index'], image)
    runner.invoke()
    result.append(runner.get_tensor(runner.get_output_details()[0]['index'])[0])
  return np.stack(result)


@pytest.fixture(scope='module')
def files():
  fp32 = convert(False)
  reference = outputs(fp32)
  calls = []

  def score(data):
    calls.append(len(data))
    # Outputs span about [-5, 5]: the PSNR peak of 2 keeps the figures on the export's scale.
    return accuracy.image_errors(outputs(data)[..., :3], reference[..., :3])['psnr_db_min']
  return convert(True), fp32, score, calls


def large(data: bytes) -> int:
  return sum(1 for _, shape in graph_edits.float16_constants(data) if np.prod(shape) > graph_edits.SMALL_CONSTANT_ELEMENTS)


def test_without_a_score_only_small_constants_go_float32(files):
  fp16, fp32, _, _ = files
  data, info = mixed_precision.fp16_file(fp16, fp32)
  assert info['small_constants_float32'] == 3 and info['large_constants_float32'] == []  # the biases
  assert large(data) == 3


def test_a_file_that_meets_the_target_keeps_its_large_constants_float16(files):
  fp16, fp32, score, calls = files
  calls.clear()
  data, info = mixed_precision.fp16_file(fp16, fp32, score, target_db=20.0)
  assert len(calls) == 1 and info['large_constants_float32'] == [] and large(data) == 3
  assert info['psnr_db_min'] >= 20.0


def test_below_the_target_large_constants_go_float32_until_it_is_met(files):
  fp16, fp32, score, _ = files
  small_only, _ = mixed_precision.fp16_file(fp16, fp32)
  start = score(small_only)
  per_byte = {}
  for position, shape in graph_edits.float16_constants(small_only):
    restored = mixed_precision._restore(small_only, fp32, {position})
    per_byte[position] = ((score(restored) - start) / (len(restored) - len(small_only)), list(shape))
  assert len(per_byte) == 3
  first = max(per_byte.values())
  target = max(start + 1.0, score(mixed_precision._restore(small_only, fp32, set(per_byte))) - 1.0)
  data, info = mixed_precision.fp16_file(fp16, fp32, score, target_db=target, max_growth=10.0)
  kept = info['large_constants_float32']
  assert kept[0]['shape'] == first[1]  # the most accurate per byte goes first
  assert 1 <= len(kept) <= 3 and large(data) == 3 - len(kept)
  assert [k['psnr_db_min'] for k in kept] == sorted(k['psnr_db_min'] for k in kept)
  assert info['psnr_db_min'] == pytest.approx(score(data)) and info['psnr_db_min'] >= target
  assert info['psnr_db_min_float16_weights'] == pytest.approx(start)
  # It stops at the target: one constant fewer would not have met it.
  assert len(kept) == 1 or kept[-2]['psnr_db_min'] < target


def test_the_file_grows_no_more_than_allowed(files):
  fp16, fp32, score, _ = files
  small_only, _ = mixed_precision.fp16_file(fp16, fp32)
  data, info = mixed_precision.fp16_file(fp16, fp32, score, target_db=500.0, max_growth=1.0)
  assert data == small_only and info['large_constants_float32'] == [] and info['psnr_db_min'] < 500.0
  everything, info = mixed_precision.fp16_file(fp16, fp32, score, target_db=500.0, max_growth=10.0)
  assert large(everything) == 0 and len(info['large_constants_float32']) == 3
  np.testing.assert_allclose(outputs(everything), outputs(fp32), rtol=1e-5, atol=1e-5)

"""Network structure: paper-size counts from shapes, the projector mapping, the skip-before-upsample
rewrite, keypoint encoding, the enhancer's inner gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilayer_jax import complexity
from bilayer_jax import config as config_lib
from bilayer_jax import model as model_lib
from bilayer_jax.nn.warp import identity_grid
from bilayer_jax.avatar import projectors
from bilayer_jax.avatar.texture_enhancer import enhance_texture, guiding_loss
from bilayer_jax.frame.keypoints_embedder import harmonic_encoding

PAPER_PARAMETERS = dict(
    identity_embedder=31_442_304, texture_generator=32_549_443, texture_projector=23_115_550,
    inference_generator=4_123_782, inference_projector=7_720_286, keypoints_embedder=1_463_040,
    discriminator=19_517_633, texture_enhancer=2_715_331)
PAPER_MACS = dict(
    identity_embedder=52_764_606_464, texture_generator=34_791_751_680, texture_projector=9_551_028_224,
    inference_projector=1_577_095_168, keypoints_embedder=1_458_176, inference_generator=4_312_793_088,
    texture_enhancer=61_811_458_048, discriminator=52_001_013_760)


@pytest.fixture(scope='module')
def paper_report():
  return complexity.report(config_lib.get_config('paper'))


def test_paper_parameter_counts_equal_the_reference(paper_report):
  assert paper_report.parameters == PAPER_PARAMETERS


def test_paper_macs_equal_the_reference(paper_report):
  assert paper_report.macs == PAPER_MACS
  # the exact rewrite moves the adaptive skip convs before the upsampling: skip cost / 4
  assert paper_report.inference_generator_rewritten == 4_312_793_088 - 490_733_568 * 3 // 4 == 3_944_742_912


def test_keypoints_embedder_without_harmonics():
  c = config_lib.get_config('paper')
  c.pse_use_harmonic_enc = False
  assert complexity.parameter_counts(c)['keypoints_embedder'] == 1_219_328


def test_small_size_is_a_quarter_of_the_channels():
  c = config_lib.get_config('small')
  counts = complexity.parameter_counts(c)
  assert counts['inference_generator'] < PAPER_PARAMETERS['inference_generator'] / 10


def test_config_errors_are_clear():
  c = config_lib.get_config('tiny')
  c.image_size = 48
  with pytest.raises(ValueError, match='power of two'):
    config_lib.validate(c)
  c = config_lib.get_config('tiny')
  c.tex_num_channels = 1
  with pytest.raises(ValueError, match='channels'):
    config_lib.validate(c)
  # a size the reference builds but cannot run (projector rows != generator channels)
  c = config_lib.get_config('tiny')
  c.update(dict(image_size=32, emb_num_channels=8, emb_max_channels=16, tex_num_channels=4, tex_max_channels=16,
                inf_num_channels=4, inf_max_channels=16, enh_bottleneck_tensor_size=16))
  with pytest.raises(ValueError, match='cannot be regrouped'):
    config_lib.validate(c)
  with pytest.raises(ValueError, match='unknown model size'):
    config_lib.get_config('huge')


def test_harmonic_encoding_order():
  poses = np.array([[0.1, -0.3]], np.float32)
  enc = np.asarray(harmonic_encoding(jnp.asarray(poses), 4))
  angles = np.array([0.1 * np.pi * 2 ** j for j in range(4)] + [-0.3 * np.pi * 2 ** j for j in range(4)])
  np.testing.assert_allclose(enc[0], np.concatenate([np.sin(angles), np.cos(angles)]), atol=1e-6)


def test_projector_mapping_follows_spec_1_6():
  """Embedding k drives norm2 and the skip of block k and norm1 of block k+1 (final norm for the last)."""
  b = 2
  groups = [[jnp.full((b, 4, 2), 10 * k + j) for j in range(3)] for k in range(3)]
  groups = [[g[0], jnp.full((b, 4, 5), 10 * k + 1.0), g[2]] for k, g in enumerate(groups)]
  adaptive = projectors.generator_adaptive_params(groups, 'ada_bn')
  assert set(adaptive) == {'block_0', 'block_1', 'block_2', 'final_norm'}
  assert 'norm1' not in adaptive['block_0']  # block 0's norm1 is a plain BatchNorm
  for k in range(3):
    assert float(adaptive[f'block_{k}']['norm2']['scale'][0, 0]) == 10 * k
    assert adaptive[f'block_{k}']['skip']['kernel'].shape == (b, 4, 4)
  assert float(adaptive['block_1']['norm1']['scale'][0, 0]) == 2
  assert float(adaptive['block_2']['norm1']['scale'][0, 0]) == 12
  assert float(adaptive['final_norm']['scale'][0, 0]) == 22


def test_projector_conv_rows_are_output_channels():
  out = jnp.arange(3 * 5, dtype=jnp.float32).reshape(1, 3, 5)  # 3 output channels, 4 inputs + bias
  conv = projectors._conv_params(out)
  np.testing.assert_array_equal(conv['kernel'][0], np.asarray(out[0, :, :4]).T)
  np.testing.assert_array_equal(conv['bias'][0], np.asarray(out[0, :, 4]))


@pytest.mark.parametrize('upsample_mode', ['resize', 'broadcast'])
def test_skip_before_upsample_is_an_exact_rewrite(tiny_model, upsample_mode):
  config = tiny_model.config.copy_and_resolve_references()
  config.upsample_mode = upsample_mode
  variables = tiny_model.variables
  rng = np.random.default_rng(1)
  b = 2
  image = jnp.asarray(rng.uniform(-1, 1, (b, 64, 64, 3)).astype(np.float32))
  stickman = jnp.asarray(rng.uniform(-1, 1, (b, 64, 64, 3)).astype(np.float32))
  poses = jnp.asarray(rng.uniform(-1, 1, (3 * b, 136)).astype(np.float32))
  outputs = {}
  for flag in (False, True):
    config.skip_before_upsample = flag
    nets = model_lib.build_networks(config)
    inputs = jnp.concatenate([image, stickman], -1)
    tex_adaptive, inf_adaptive, _ = model_lib.identity_adaptive_params(nets, variables, inputs)
    texture = nets['texture_generator'].apply(variables['texture_generator'], tex_adaptive)
    frame, _ = model_lib.frame_outputs(config, nets, variables, texture, inf_adaptive, poses)
    outputs[flag] = (texture, frame['image'], frame['mask'])
  for before, after in zip(outputs[False], outputs[True]):
    np.testing.assert_allclose(before, after, atol=2e-6)


def test_guiding_loss_gradient_and_enhancer_steps():
  rng = np.random.default_rng(2)
  texture = jnp.asarray(rng.uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32))
  uv = jnp.asarray(np.asarray(identity_grid(8))[None])
  low = jnp.zeros((1, 8, 8, 3))
  target = jnp.asarray(rng.uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32))
  # identity warp, no mask: d/dT 0.5 * sum((T - X)^2) = T - X
  g = jax.grad(guiding_loss)(texture, uv, low, None, target)
  np.testing.assert_allclose(g, texture - target, atol=1e-5)
  # an "enhancer" that proposes atanh(-0.5 * g): each step halves the error
  seen = []

  def net(x):
    seen.append(x)
    return jnp.arctanh(jnp.clip(-0.5 * x[..., 3:], -0.99, 0.99))

  refined = enhance_texture(net, texture, uv, low, None, target, num_steps=3)
  assert len(seen) == 3 and seen[0].shape == (1, 8, 8, 6)
  np.testing.assert_allclose(refined - target, (texture - target) / 8, atol=1e-4)

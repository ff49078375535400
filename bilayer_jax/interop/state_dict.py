"""Reading a flat PyTorch state dict (the authors' checkpoints, VGG and ArcFace weights) as numpy arrays,
without running pickled code; .npz files and mappings of arrays are accepted in its place."""
from __future__ import annotations

import pathlib
import pickle
import re
from typing import Mapping

import numpy as np


def read_state_dict(source, what: str) -> dict[str, np.ndarray]:
  """A flat {name: array} from a PyTorch state-dict file, an .npz file, or a mapping of arrays.

  .pth/.pt files are read with `torch.load(weights_only=True)` (no pickled code runs); torch is needed
  only for them. `what` names the expected weights in error messages.
  """
  if isinstance(source, Mapping):
    items = source
  else:
    path = pathlib.Path(source)
    if not path.is_file():
      raise FileNotFoundError(f'{what}: no such file {path}')
    if path.suffix == '.npz':
      with np.load(path, allow_pickle=False) as f:
        items = dict(f)
    else:
      try:
        import torch
      except ImportError as e:
        raise ImportError(f'{what}: reading {path.name} needs torch (pip install bilayer-jax[torch]); '
                          'or pass a dict of numpy arrays / an .npz file with the same keys') from e
      try:
        items = torch.load(path, map_location='cpu', weights_only=True)
      except Exception as e:
        found = re.search(r'GLOBAL (\S+)', str(e))
        if isinstance(e, pickle.UnpicklingError) and found:  # torch's text suggests weights_only=False: not here
          raise ValueError(f'{what}: {path} holds pickled Python objects besides tensors (it names '
                           f'{found.group(1)}), which could run code when loaded, so it is not read; if the file '
                           'is yours, re-save only the weights: torch.save(network.state_dict(), path)') from e
        raise ValueError(f'{what}: {path} is not a PyTorch state dict that torch.load(weights_only=True) '
                         f'can read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})') from e
      if not isinstance(items, Mapping):
        raise ValueError(f'{what}: {path} holds a {type(items).__name__}, not a state dict')
  state = {}
  for key, value in items.items():
    if hasattr(value, 'detach'):
      value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray) or value.dtype.kind not in 'fiub':
      raise ValueError(f'{what}: entry {key!r} is a {type(value).__name__}, not a numeric array '
                       '(expected a flat state dict of tensors)')
    state[str(key)] = value
  return state

"""Inference checkpoints: a folder with `config.json` (the model config) and `variables.npz`.

This is the format `bilayer_jax.load` opens, `import-torch` writes and training exports. Arrays are
stored flat under '/'-joined paths (network/collection/module/.../leaf), readable without this package.
Writing never replaces an existing checkpoint unless asked; the folder appears complete or not at all
(written to a temporary sibling, then renamed).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
import zipfile
import zlib

import ml_collections
import numpy as np

from bilayer_jax import config as config_lib
from bilayer_jax.integrity import CheckpointCorrupt

CONFIG_FILE = 'config.json'
VARIABLES_FILE = 'variables.npz'
FORMAT_VERSION = 1


def flatten(tree: dict, prefix: str = '', leaf=np.asarray) -> dict:
  """{'a': {'b': x}} -> {'a/b': leaf(x)}."""
  flat = {}
  for key, value in tree.items():
    path = f'{prefix}/{key}' if prefix else str(key)
    if isinstance(value, dict):
      flat.update(flatten(value, path, leaf))
    else:
      flat[path] = leaf(value)
  return flat


def unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def config_to_dict(config) -> dict:
  return {k: (v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v) for k, v in config.items()}


def config_from_dict(d: dict) -> ml_collections.ConfigDict:
  """A model config from a saved dict, on top of the paper defaults (so that old files stay readable)."""
  config = config_lib.paper()
  unknown = set(d) - set(config.keys()) - {'format_version'}
  if unknown:
    raise ValueError(f'checkpoint config has unknown fields {sorted(unknown)}')
  for k, v in d.items():
    if k != 'format_version':
      config[k] = v
  config_lib.validate(config)
  return config


def save(directory, config, variables: dict, overwrite: bool = False) -> pathlib.Path:
  """Write a checkpoint folder. Refuses an existing path unless overwrite=True."""
  directory = pathlib.Path(directory)
  if directory.exists() and not overwrite:
    raise FileExistsError(f'{directory} already exists; choose another path or pass overwrite=True')
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{directory.name}.', dir=directory.parent))
  try:
    payload = config_to_dict(config)
    payload['format_version'] = FORMAT_VERSION
    (tmp / CONFIG_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True) + '\n')
    np.savez(tmp / VARIABLES_FILE, **flatten(variables))
    if directory.exists():
      shutil.rmtree(directory)
    os.replace(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return directory


def _training_workdir_hint(directory: pathlib.Path) -> str:
  """For a `bilayer-jax train` workdir given where a checkpoint belongs: where its inference checkpoints are."""
  exports = sorted((directory / 'inference').glob('step_*/' + CONFIG_FILE))
  if exports:
    return (f'; it is a training workdir: its newest inference checkpoint is {exports[-1].parent} '
            f'({len(exports)} in {directory / "inference"})')
  if (directory / 'checkpoints').is_dir():
    return ('; it is a training workdir without an inference checkpoint yet: training writes one to '
            f'{directory / "inference" / "step_N"} when it finishes (rerun the same train command to finish)')
  return ''


def load(directory) -> tuple[ml_collections.ConfigDict, dict]:
  """Read (config, variables) from a checkpoint folder, checking every array's shape against the config."""
  directory = pathlib.Path(directory)
  config_path, variables_path = directory / CONFIG_FILE, directory / VARIABLES_FILE
  if not directory.exists():
    raise FileNotFoundError(f'{directory}: no such checkpoint folder')
  for path in (config_path, variables_path):
    if not path.is_file():
      raise FileNotFoundError(f'{directory} is not a bilayer-jax checkpoint: {path.name} is missing'
                              + _training_workdir_hint(directory))
  try:
    config = config_from_dict(json.loads(config_path.read_text()))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointCorrupt(f'{config_path} is not a readable config ({e}); re-export the checkpoint') from None
  try:  # every member of the .npz carries a CRC-32 written at save time; reading a member checks it
    with np.load(variables_path, allow_pickle=False) as data:
      flat = {k: data[k] for k in data.files}
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
    raise CheckpointCorrupt(f'{variables_path} is damaged ({type(e).__name__}: {e}); re-export the checkpoint '
                            'from its training workdir') from None
  variables = unflatten(flat)
  check_shapes(config, variables)
  return config, variables


def check_shapes(config, variables: dict) -> None:
  """Raise ValueError naming every array whose presence or shape does not fit the config."""
  from bilayer_jax import model  # model imports this module's users; keep the import local

  networks = tuple(n for n in model.NETWORKS if n in variables)
  unknown_networks = set(variables) - set(model.NETWORKS)
  expected = flatten(model.variable_shapes(config, networks), leaf=lambda x: tuple(x.shape))
  actual = flatten(variables, leaf=np.shape)
  problems = [f'unknown network {n!r}' for n in sorted(unknown_networks)]
  problems += [f'missing {k} {tuple(s)}' for k, s in sorted(expected.items()) if k not in actual]
  problems += [f'unexpected {k}' for k in sorted(actual) if k not in expected and k.split('/')[0] in networks]
  problems += [f'{k}: shape {tuple(actual[k])}, expected {tuple(s)}' for k, s in sorted(expected.items())
               if k in actual and tuple(actual[k]) != tuple(s)]
  if problems:
    shown = '\n  '.join(problems[:20]) + ('' if len(problems) <= 20 else f'\n  ... and {len(problems) - 20} more')
    raise ValueError(f'variables do not match the model config (size {config.get("size")!r}):\n  {shown}')


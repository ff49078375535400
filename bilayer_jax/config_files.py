"""The one way every entry point loads an experiment config and applies `--config.key=value` overrides.

A config is named by `SPEC[:ARG]`:
  SPEC  a bare name (`tiny_cpu`, `base_model`, `demo`): the module of that name in the `experiments` package
        that the wheel ships, found from any folder; or a path to a user's own `.py` file with a
        `get_config(arg)` function.
  ARG   one meaning everywhere: comma-separated options, handed to `get_config` as one string; each config's
        docstring lists the options it takes and it rejects any other (`parse_options`).

The experiments import bilayer_jax; this module finds and loads them by name (importlib) and imports none.
The loaded ConfigDict is locked: an override of a field that does not exist fails instead of adding it.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import pathlib

import ml_collections


class ConfigError(ValueError):
  """A config that cannot be found, loaded or overridden as asked."""


def parse_options(arg: str | None, allowed: dict[str, tuple[str, ...]]) -> dict[str, str]:
  """`ARG` -> {group: chosen option}. allowed: group -> its options, the first being the default; at most
  one option per group. `parse_options('synthetic,micro', {'data': ('records', 'synthetic'),
  'size': ('tiny', 'micro')})` == {'data': 'synthetic', 'size': 'micro'}."""
  chosen = {group: options[0] for group, options in allowed.items()}
  seen = set()
  for word in filter(None, (w.strip() for w in (arg or '').split(','))):
    group = next((g for g, options in allowed.items() if word in options), None)
    if group is None:
      known = sorted(o for options in allowed.values() for o in options)
      raise ConfigError(f'unknown config option {word!r}; this config takes {known}')
    if group in seen:
      raise ConfigError(f'config options {arg!r} choose the {group} twice')
    seen.add(group)
    chosen[group] = word
  return chosen


def _module(spec: str):
  looks_like_path = spec.endswith('.py') or '/' in spec or '\\' in spec
  if not looks_like_path:
    try:
      return importlib.import_module(f'experiments.{spec}')
    except ModuleNotFoundError as e:
      if e.name not in (f'experiments.{spec}', 'experiments'):
        raise
      raise ConfigError(f'no packaged experiment config {spec!r}; the packaged ones: {packaged_names()}; '
                        'or pass a path to a .py config file') from None
  path = pathlib.Path(spec)
  if not (path.suffix == '.py' and path.is_file()):
    raise ConfigError(f'{spec} is not a config file (a .py file with get_config) nor a packaged config name '
                      f'{packaged_names()}')
  module_spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def packaged_names() -> list[str]:
  # Found, not imported: the experiments import bilayer_jax, and bilayer_jax only loads them by name.
  spec = importlib.util.find_spec('experiments')
  if spec is None or not spec.submodule_search_locations:
    return []
  folder = pathlib.Path(list(spec.submodule_search_locations)[0])
  return sorted(p.stem for p in folder.glob('*.py') if p.stem != '__init__')


def load(spec: str) -> ml_collections.ConfigDict:
  """`SPEC[:ARG]` -> the locked ConfigDict its get_config returns."""
  name, _, arg = spec.partition(':')
  module = _module(name)
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'{name} has no get_config(arg) function')
  config = module.get_config(arg) if arg else module.get_config()
  config.lock()
  return config


def _parse_value(raw: str):
  try:
    return json.loads(raw)
  except json.JSONDecodeError:
    return {'True': True, 'False': False}.get(raw, raw)


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
  """`--config.a.b=value` for each item: the value is parsed as JSON when it can be (numbers, lists,
  true/false), else taken as a string; an int is accepted for a float field and a list for a tuple one."""
  for item in overrides:
    if not item.startswith('--config.') or '=' not in item:
      raise ConfigError(f'unrecognized argument {item!r}; overrides look like --config.training.batch_size=8')
    key, raw = item[len('--config.'):].split('=', 1)
    set_field(config, key, _parse_value(raw))
  return config


def set_field(config: ml_collections.ConfigDict, key: str, value) -> None:
  """config[a][b]... = value for the dotted key; the field must exist."""
  node = config
  *parents, leaf = key.split('.')
  for p in parents:
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or p not in node:
      raise ConfigError(f'--config.{key}: no such field')
    node = node[p]
  if leaf not in node:
    raise ConfigError(f'--config.{key}: no such field')
  old = node[leaf]
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  try:
    node[leaf] = value
  except TypeError as e:
    raise ConfigError(f'--config.{key}={value!r}: {e}') from None

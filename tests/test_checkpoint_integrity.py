"""Training checkpoints that cannot load silently wrong: flipped bytes, a truncated file and a wrong checksum each
fail verification, the failed checkpoint is moved aside (not deleted) and the newest intact one is restored."""
import json
import pathlib

import jax
import numpy as np
import pytest

from bilayer_jax import integrity
from bilayer_jax import model as model_lib
from bilayer_jax.train.checkpoints import CORRUPT_DIR, CheckpointCorrupt, Checkpointer
from bilayer_jax.train.defaults import training_config
from bilayer_jax.train.step import init_state


@pytest.fixture(scope='module')
def template():
  config = training_config('micro')
  return init_state(config, model_lib.init_variables(config.model, 0))


def save_two(directory, template):
  ck = Checkpointer(directory, 1, 5, async_save=False)
  later = template.replace(step=template.step + 7,
                           variables=jax.tree_util.tree_map(lambda x: x + 1, template.variables))
  ck.save(1, template, {'input_position': 1, 'step': 1})
  ck.save(2, later, {'input_position': 2, 'step': 2})
  ck.wait()
  return ck


def largest_file(step_dir: pathlib.Path) -> pathlib.Path:
  return max((p for p in step_dir.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)


def flip_bytes(path: pathlib.Path):
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
  path.write_bytes(bytes(data))


def truncate(path: pathlib.Path):
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 3])


def wrong_checksum(step_dir: pathlib.Path):
  meta = next(p for p in step_dir.rglob('*') if p.is_file() and p.parent.name == 'meta')
  payload = json.loads(meta.read_text())
  name = sorted(payload['checksums'])[0]
  payload['checksums'][name] = payload['checksums'][name][:-8] + '00000000'
  meta.write_text(json.dumps(payload))


@pytest.mark.parametrize('damage', ['flip_bytes', 'truncate', 'wrong_checksum'])
def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_previous_one_restored(tmp_path, template, damage):
  ck = save_two(tmp_path / 'checkpoints', template)
  step2 = tmp_path / 'checkpoints' / '2'
  {'flip_bytes': lambda: flip_bytes(largest_file(step2 / 'state')),
   'truncate': lambda: truncate(largest_file(step2 / 'state')),
   'wrong_checksum': lambda: wrong_checksum(step2)}[damage]()
  with pytest.raises(CheckpointCorrupt, match=str(step2)):
    ck.restore(2, template)
  messages = []
  state, meta, step = ck.restore_newest_intact(template, log=messages.append)
  assert step == 1 and meta['input_position'] == 1 and 'checksums' not in meta
  assert len(messages) == 1 and str(step2) in messages[0] and CORRUPT_DIR in messages[0]
  assert not step2.exists() and ck.all_steps() == [1]
  aside = list((tmp_path / CORRUPT_DIR).iterdir())
  assert len(aside) == 1 and aside[0].name.startswith('2.') and any(aside[0].rglob('*'))  # kept, not deleted
  same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)), state.variables, template.variables)
  assert all(jax.tree_util.tree_leaves(same))


def test_intact_checkpoints_verify_and_restore_exactly(tmp_path, template):
  ck = save_two(tmp_path / 'checkpoints', template)
  state, meta, step = ck.restore_newest_intact(template, log=pytest.fail)
  assert step == 2 and int(state.step) == int(template.step) + 7
  assert ck.verified_latest_step(template) == 2


def test_checksums_name_what_differs():
  flat = {'a': np.arange(4, dtype=np.float32), 'b': np.zeros((2, 2), np.int32)}
  sums = integrity.checksums(flat)
  assert integrity.mismatches(flat, sums) == []
  changed = dict(flat, a=np.array([0, 1, 2, 3.5], np.float32))
  assert integrity.mismatches(changed, sums) == ['a']
  assert integrity.mismatches({'a': flat['a']}, sums) == ['b']
  assert integrity.mismatches(dict(flat, b=flat['b'].astype(np.int64)), sums) == ['b']  # dtype counts


@pytest.mark.parametrize('damage', ['flip_bytes', 'truncate'])
def test_a_damaged_inference_checkpoint_is_refused_with_its_file_named(tmp_path, damage):
  from bilayer_jax import checkpoint as checkpoint_lib

  config = training_config('micro').model
  out = checkpoint_lib.save(tmp_path / 'inference', config, model_lib.init_variables(config, 0))
  checkpoint_lib.load(out)
  {'flip_bytes': flip_bytes, 'truncate': truncate}[damage](out / checkpoint_lib.VARIABLES_FILE)
  with pytest.raises(CheckpointCorrupt, match='variables.npz is damaged'):
    checkpoint_lib.load(out)


def test_a_save_the_disk_cannot_hold_is_refused_before_writing(tmp_path, template, monkeypatch):
  import errno
  import shutil

  from bilayer_jax import user_errors

  ck = save_two(tmp_path / 'checkpoints', template)
  total = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(shutil, 'disk_usage', lambda path: total._replace(free=1 << 20))
  with pytest.raises(OSError) as error:
    ck.save(3, template, {'input_position': 3, 'step': 3})
  assert error.value.errno == errno.ENOSPC
  line = user_errors.describe(error.value)
  assert line.startswith(str(tmp_path / 'checkpoints')) and 'MiB free' in line and 'intact' in line
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['1', '2']  # nothing partial
  monkeypatch.setattr(shutil, 'disk_usage', lambda path: total)
  assert ck.save(3, template, {'input_position': 3, 'step': 3})
  ck.wait()
  assert ck.all_steps() == [1, 2, 3]

"""File access for `bilayer-jax preprocess`: local folders and cloud storage (gs://, s3://) through etils epath.

  from data_pipelines import fs
  fs.write_json(fs.path('gs://bucket/out') / 'plan.json', plan)       # atomic, refuses to replace
  fs.write_through_local(final, write)                               # write(local name), then publish
  with fs.local_copy('gs://bucket/in/p/v/clip.mp4') as name: ...     # a local file for ffmpeg / OpenCV

Data flow: media.py (scanning and reading clips), records.py (shard files) and job.py (plan, reports,
manifest) call these instead of `open`/`os` so that the same code runs on one machine and on Beam workers that
read and write gs:// paths. epath reaches gs:// through tf.io.gfile (or gcsfs when installed).

Only local paths are exercised by the tests (the remote branches too, by tests/test_beam.py on local files
taken for remote ones): gs:// itself goes through the same calls but was never run here.
Atomicity: a file is written to a unique temporary name beside its final name and then renamed, so a reader
never sees a partial file, and two attempts at the same file (a Beam bundle that runs twice) never write into
one temporary file. On a local disk the final rename is a hard link, which fails when the final name exists,
so a finished file is never replaced; on object stores a rename is a copy: a finished file could be replaced by
an identical one from a second attempt (the job is deterministic), never by a partial one.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import uuid

from etils import epath

TMP_SUFFIX = '.tmp'


def path(value) -> epath.Path:
  return epath.Path(value)


def is_remote(value) -> bool:
  """True for URIs (gs://..., s3://...): files that ffmpeg, OpenCV and ArrayRecord cannot open directly."""
  return '://' in os.fspath(value)


def temporary_name(final) -> epath.Path:
  """A unique sibling of `final` ending in .tmp (skipped by media.scan, removed by preprocess on a rerun)."""
  final = path(final)
  return final.with_name(f'{final.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}')


def publish(tmp, final) -> bool:
  """Move a finished temporary file to its final name without replacing an existing file.

  Returns False (and removes `tmp`) when `final` already exists: another attempt finished it first.
  """
  tmp, final = path(tmp), path(final)
  if is_remote(final):
    if final.exists():
      tmp.unlink()
      return False
    tmp.rename(final)
    return True
  try:
    os.link(tmp, final)  # atomic and fails if final exists, unlike rename
  except FileExistsError:
    os.unlink(tmp)
    return False
  except OSError as e:
    if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EOPNOTSUPP, errno.EMLINK):
      raise
    # a filesystem without hard links: check, then rename (the job is deterministic, so a lost race
    # replaces the file by an identical one)
    if os.path.exists(final):
      os.unlink(tmp)
      return False
    os.replace(tmp, final)
    return True
  os.unlink(tmp)
  return True


def write_bytes(final, data: bytes, replace: bool = False):
  """Atomic write of a small file; refuses to replace an existing file unless `replace`."""
  final = path(final)
  if final.exists() and not replace:
    raise FileExistsError(f'{final} exists; not overwriting')
  tmp = temporary_name(final)
  tmp.write_bytes(data)
  if replace:
    tmp.replace(final)
  elif not publish(tmp, final):
    raise FileExistsError(f'{final} exists; not overwriting')


def write_json(final, data, replace: bool = False):
  write_bytes(final, json.dumps(data, indent=1, sort_keys=True).encode(), replace=replace)


def read_json(name):
  return json.loads(path(name).read_text())


@contextlib.contextmanager
def local_copy(name):
  """A local file name holding `name`'s bytes: `name` itself when local, else a temporary download."""
  if not is_remote(name):
    yield os.fspath(name)
    return
  suffix = path(name).suffix
  handle, local = tempfile.mkstemp(suffix=suffix, prefix='bilayer-')
  try:
    with os.fdopen(handle, 'wb') as dst, path(name).open('rb') as src:
      shutil.copyfileobj(src, dst, 1 << 22)
    yield local
  finally:
    os.unlink(local)


def write_through_local(final, write) -> bool:
  """`write(local_name)` makes the file; it then appears at `final` without replacing an existing file.

  For a local `final`, `write` writes straight into a unique temporary name beside it; for a remote one,
  into a local temporary file that is uploaded to such a name. Returns publish()'s answer.
  """
  final = path(final)
  tmp = temporary_name(final)
  if not is_remote(final):
    try:
      write(os.fspath(tmp))
    except BaseException:
      with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
      raise
    return publish(tmp, final)
  handle, local = tempfile.mkstemp(prefix='bilayer-')
  os.close(handle)
  try:
    write(local)
    with open(local, 'rb') as src, tmp.open('wb') as dst:  # the upload: epath's copy goes by the source's backend
      shutil.copyfileobj(src, dst, 1 << 22)
  finally:
    os.unlink(local)
  return publish(tmp, final)

"""One trainer per workdir: an exclusive lock held for the run's life.

The lock is `fcntl.flock` on WORKDIR/train.lock, so the kernel releases it when the process ends in any way
(exit, exception, SIGKILL): a lock file left by a killed trainer is stale by construction and the next run
takes it over, saying whose it was. The file records the holder (pid, host, start time) so that a second
trainer can name it. flock is per machine: on a network filesystem shared by several hosts it is only as
good as that filesystem's flock support, which is why only process 0 of a multi-host run takes it.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import socket
import time

LOCK_FILE = 'train.lock'


class WorkdirBusy(RuntimeError):
  """Another trainer holds the workdir."""


def _holder(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text() or '{}')
  except (OSError, ValueError):
    return {}


def _describe(holder: dict) -> str:
  if not holder:
    return 'another process'
  started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('started', 0)))
  return f'process {holder.get("pid")} on {holder.get("host")} (started {started})'


@contextlib.contextmanager
def workdir_lock(workdir, enabled: bool = True):
  """Hold WORKDIR/train.lock for the body; raise WorkdirBusy at once when another process holds it."""
  if not enabled:
    yield None
    return
  path = pathlib.Path(workdir) / LOCK_FILE
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirBusy(f'{workdir} is in use by {_describe(_holder(path))}: wait for it to finish, stop it, '
                        'or use another --workdir') from None
    previous = _holder(path)
    if previous and previous.get('pid') != os.getpid():
      print(f'note: taking over the lock of {_describe(previous)}, which is no longer running', flush=True)
    me = {'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + '\n').encode(), 0)
    try:
      yield path
    finally:
      os.ftruncate(fd, 0)  # an empty file: nobody holds it
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)

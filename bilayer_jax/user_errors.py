"""Faults a user can fix (a full disk, a read-only folder, a damaged file, a wrong argument) as one line that
names the file and says what to do. The CLI prints that line and exits 2; `--debug` or BILAYER_DEBUG=1 shows
the traceback instead.

Which exceptions count: OSError (the file system), ValueError (bad input: every damaged or wrong file this
project reads is reported as one, CheckpointCorrupt and ConfigError included) and ImportError (an optional
dependency missing). Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import os
import re

DEBUG_ENV = 'BILAYER_DEBUG'
USER_FAULTS = (OSError, ValueError, ImportError)

# What to do, per errno, for the faults a user meets on a file system.
_ERRNO_ADVICE = {
    errno.ENOSPC: 'no space left on the device: free space, or use a folder on another disk',
    errno.EDQUOT: 'disk quota exceeded: free space, or use a folder on another disk',
    errno.EROFS: 'the file system is read-only: use a writable folder',
    errno.EACCES: 'permission denied: use a folder you can write to, or change its permissions',
    errno.EPERM: 'operation not permitted: use a folder you own',
    errno.ENOTDIR: 'a part of this path is a file, not a folder: choose another path',
    errno.EISDIR: 'this is a folder, not a file',
    errno.ENOENT: 'no such file or folder',
}
# tensorstore (Orbax's storage layer) reports OS errors inside a ValueError: '... "PATH" ... [os_error_code='28']'.
_TENSORSTORE_ERRNO = re.compile(r"os_error_code='?(\d+)")
_QUOTED_PATH = re.compile(r'"(/[^"]+)"')


def debug_requested(flag: bool = False) -> bool:
  return bool(flag) or os.environ.get(DEBUG_ENV, '') not in ('', '0')


def os_error_code(exc: BaseException) -> int | None:
  """The errno behind an exception: an OSError's own, or the one tensorstore wrote into its message."""
  if isinstance(exc, OSError) and exc.errno:
    return exc.errno
  match = _TENSORSTORE_ERRNO.search(str(exc))
  return int(match.group(1)) if match else None


def describe(exc: BaseException) -> str:
  """One line for a user fault: the file, what went wrong and what to do."""
  code = os_error_code(exc)
  if isinstance(exc, OSError) and exc.filename is not None and code in _ERRNO_ADVICE:
    where = exc.filename if exc.filename2 is None else f'{exc.filename} -> {exc.filename2}'
    if exc.strerror and exc.strerror != os.strerror(code):  # a message of this project's, already advice
      return f'{where}: {exc.strerror}'
    return f'{where}: {_ERRNO_ADVICE[code]}'
  if not isinstance(exc, OSError) and code in _ERRNO_ADVICE:  # a storage library's wrapped OS error
    paths = _QUOTED_PATH.findall(str(exc))
    where = paths[-1] if paths else 'a file being written'
    return f'{where}: {_ERRNO_ADVICE[code]}'
  text = str(exc).strip() or type(exc).__name__
  if isinstance(exc, (FileNotFoundError, FileExistsError)) or not isinstance(exc, OSError):
    return text
  return f'{type(exc).__name__}: {text}'

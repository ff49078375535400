"""Process setup for CPU runs: the memory allocator and XLA's CPU convolution library.

XLA on the CPU allocates each step's temporaries as one large block. glibc's malloc serves blocks that large
with a fresh mmap and unmaps them on free, so every training step page-faults its whole working set again
(at the small size about 320,000 faults, 1.2 GB, and 0.6-1.0 s of kernel time per step on the 2-core
machine of docs/performance.md). tcmalloc keeps freed memory for reuse: no faults after the first step, and the
step is 20-30% faster. It can only be chosen before the process starts (LD_PRELOAD), so the command line
re-executes itself once with it when the library is installed (Debian/Ubuntu: libtcmalloc-minimal4).
Without tcmalloc, a process limited to one core tells glibc's malloc to keep what it frees
(`keep_glibc_memory`): no faults after the first step either, 10-30% faster than glibc as it comes. That
takes a single malloc arena, whose lock costs more than the faults once XLA runs on several threads (about
14,000 context switches per small-size step on two cores), so with more cores glibc stays as it is.
Set BILAYER_MALLOC=system to keep the system allocator as it is in every case.

XLA's CPU backend (jaxlib 0.10) hands convolutions to YNNPACK by default, whose weight-gradient convolutions
run 3-4x slower than Eigen's and on one thread. `configure_xla_cpu` keeps YNNPACK for reductions and dots
only, which made the small-size training step about 10% faster on one and two threads. It must run before
JAX creates its CPU backend; a user's own setting of the flag in XLA_FLAGS wins.
"""
from __future__ import annotations

import ctypes.util
import os
import pathlib
import sys

ENV = 'BILAYER_MALLOC'
GLIBC_KEPT = 'glibc-kept'
# mallopt(3) parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
YNN_TYPES = 'LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_DOT'
# jaxlib versions whose XLA knows the flag (an unknown flag in XLA_FLAGS aborts the process).
YNN_FLAG_JAXLIB = ('0.10.',)
_NAMES = ('tcmalloc_minimal', 'tcmalloc')
_FALLBACK_DIRS = ('/usr/lib/x86_64-linux-gnu', '/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu',
                  '/usr/lib64', '/usr/lib')


def tcmalloc_library() -> str | None:
  """Path (or soname) of an installed tcmalloc, or None."""
  for name in _NAMES:
    found = ctypes.util.find_library(name)
    if found:
      return found
  for directory in _FALLBACK_DIRS:
    for name in _NAMES:
      for candidate in sorted(pathlib.Path(directory).glob(f'lib{name}.so*')):
        return str(candidate)
  return None


def allocator_in_use() -> str:
  """'tcmalloc' when this process runs on it, else 'system'."""
  try:
    maps = pathlib.Path('/proc/self/maps').read_text()
  except OSError:
    return 'system'
  return 'tcmalloc' if 'libtcmalloc' in maps else 'system'


def preload_env(env: dict | None = None) -> dict | None:
  """A copy of `env` (default os.environ) that preloads tcmalloc, or None when it is not installed."""
  library = tcmalloc_library()
  if library is None:
    return None
  env = dict(os.environ if env is None else env)
  preload = env.get('LD_PRELOAD', '')
  env['LD_PRELOAD'] = library + (':' + preload if preload else '')
  env[ENV] = 'tcmalloc'
  return env


def reexec_with_tcmalloc() -> None:
  """Replace this process by the same command running on tcmalloc, when that helps and is possible.

  Only for Linux processes started as a command (sys.orig_argv); a no-op when BILAYER_MALLOC is set (which
  the re-executed process inherits, so this happens at most once), tcmalloc is already loaded, or it is not
  installed. The process keeps its PID, so signals and exit codes reach the caller as before.
  """
  if os.environ.get(ENV) or not sys.platform.startswith('linux') or allocator_in_use() == 'tcmalloc':
    return
  env = preload_env()
  argv = getattr(sys, 'orig_argv', None)
  if env is None or not argv:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + list(argv[1:]), env)


def keep_glibc_memory() -> bool:
  """Make glibc's malloc serve every block from one heap that it never shrinks; True when it took effect.

  No mmap for large blocks (M_MMAP_MAX 0) and no trimming of the heap's top (M_TRIM_THRESHOLD -1), so the
  next step reuses the memory the last one freed instead of faulting it in again. One arena (M_ARENA_MAX 1),
  because a thread's own arena is capped at 64 MB and glibc falls back to mmap for larger blocks. Call it
  before other threads start (before JAX or PyTorch is imported). The process keeps its peak memory until
  it exits, which a training run does anyway.
  """
  if not sys.platform.startswith('linux') or allocator_in_use() == 'tcmalloc':
    return False
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # glibc only: other C libraries' mallopt differs or does nothing
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
  return all(mallopt(option, value) == 1 for option, value in settings)


def usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def setup_allocator() -> str:
  """The allocator setup of a process started as a command; returns what it runs on.

  tcmalloc when installed (re-executes the process, see `reexec_with_tcmalloc`), else on one core glibc
  keeping its memory. BILAYER_MALLOC=system leaves the allocator alone; BILAYER_MALLOC=glibc-kept skips
  tcmalloc and keeps glibc's memory on any number of cores.
  """
  setting = os.environ.get(ENV)
  if setting == 'system':
    return 'system'
  if setting is None:
    reexec_with_tcmalloc()
  if allocator_in_use() == 'tcmalloc':
    return 'tcmalloc'
  if (setting == GLIBC_KEPT or usable_cores() == 1) and keep_glibc_memory():
    return GLIBC_KEPT
  return 'system'


def configure_xla_cpu() -> bool:
  """Route convolutions to Eigen (reductions and dots stay on YNNPACK); True when XLA_FLAGS was changed."""
  try:
    from importlib.metadata import version
    jaxlib_version = version('jaxlib')
  except Exception:
    return False
  flags = os.environ.get('XLA_FLAGS', '')
  if YNN_FLAG in flags or not jaxlib_version.startswith(YNN_FLAG_JAXLIB):
    return False
  os.environ['XLA_FLAGS'] = (flags + ' ' if flags else '') + f'{YNN_FLAG}={YNN_TYPES}'
  return True

"""Checksums of saved arrays, written at save time and checked at restore, so no checkpoint loads silently wrong.

CRC-32 of each array's bytes, with its dtype and shape: enough to catch flipped or truncated bytes (this guards
against storage faults, not against someone forging a checkpoint). Training checkpoints keep them in their
Orbax metadata; inference checkpoints' variables.npz is a zip whose members carry CRC-32s that numpy's reader
checks.
"""
from __future__ import annotations

import zlib

import numpy as np


class CheckpointCorrupt(ValueError):
  """A checkpoint whose data does not read back as it was written."""


def array_checksum(x) -> str:
  x = np.asarray(x)
  return f'{x.dtype.str}{list(x.shape)}:{zlib.crc32(x.tobytes()):08x}'


def checksums(flat: dict) -> dict[str, str]:
  """{name: checksum} of a flat {name: array} dict."""
  return {name: array_checksum(x) for name, x in flat.items()}


def mismatches(flat: dict, expected: dict[str, str]) -> list[str]:
  """Names whose array is missing, extra or differs from its recorded checksum."""
  bad = sorted(set(expected) ^ set(flat))
  bad += sorted(n for n in set(expected) & set(flat) if array_checksum(flat[n]) != expected[n])
  return bad

"""Exact rewrites of a 3x3 conv next to a 2x resampling, for the per-avatar graph (avatar_graph.py).

Both fold a fixed linear resampling into the conv's kernel once, in float64, so that the conv computes only
the pixels that are kept, at the low resolution:

  conv 3x3 'SAME' -> 2x2 average pool          ==  conv 4x4, stride 2, padding 1        (`pool_conv_kernel`)
      the pooled output is the conv's outputs averaged over a 2x2 block: a box filter applied to the kernel.
      A quarter of the outputs, at 16 instead of 4 * 9 = 36 taps each: 4/9 of the MACs. Equal on odd sizes
      too, where the VALID pooling drops the last row and column: the padding the 4x4 window then would
      need on that side is never reached.
  nearest 2x upsample -> conv 3x3 'SAME'      ==  conv 2x2 with 4 * C_out outputs on the low-resolution
                                                   input padded by 1, phases interleaved, a 1-pixel SLICE
                                                   (`upsample_conv_kernel`, `upsample_conv`)
      every output pixel of phase (dy, dx) (its position in its 2x2 block) sees a 2x2 neighbourhood of
      the low-resolution input, with the 3x3 taps that land on one input pixel summed. 16 taps per low-
      resolution pixel and output channel instead of 4 * 9: 4/9 of the MACs, times (1 + 1/H)(1 + 1/W) for
      the one padded row and column.

The price of both: kernels of 16 taps where the 3x3 ones had 9, so these convs' weights grow 16/9 (the
paper-size FP32 avatar file from 238 to 280 MiB).

The phase interleave is reshape / TRANSPOSE / reshape of 4-D tensors (phone GPU delegates reject 5-D ones),
not a DEPTH_TO_SPACE, which jax2tf does not emit. Why the phases sit in reversed order in the kernel's
output channels: the conv's output at padded position p holds phase dy = 0 of low-resolution row p and
phase dy = 1 of row p - 1; storing phase dy in slot 1 - dy makes the interleaved rows 2p + 1 - dy, so the
whole (2H + 2)-row interleave is the wanted output shifted by one row, and one SLICE finishes it.
"""
from __future__ import annotations

import jax
import numpy as np


def _check_3x3(kernel):
  if kernel.ndim != 4 or kernel.shape[:2] != (3, 3):
    raise ValueError(f'expected a 3x3 HWIO kernel, got shape {kernel.shape}')


# ----------------------------------------------------------------------------------------------------
# conv 3x3 then 2x2 average pooling


POOL_CONV_PADDING = 1


def pool_conv_kernel(kernel) -> np.ndarray:
  """The (4, 4, C_in, C_out) kernel of `pool_conv` equal to a 3x3 'SAME' conv (HWIO) and 2x2 average
  pooling; float64. The conv's bias passes through the pooling unchanged."""
  k = np.asarray(kernel, np.float64)
  _check_3x3(k)
  out = np.zeros((4, 4) + k.shape[2:], np.float64)
  for dy in (0, 1):
    for dx in (0, 1):
      out[dy:dy + 3, dx:dx + 3] += k
  return out / 4.0


def pool_conv(x, kernel, bias):
  """x (N, H, W, C_in) -> (N, H // 2, W // 2, C_out) with `pool_conv_kernel`'s kernel."""
  p = POOL_CONV_PADDING
  y = jax.lax.conv_general_dilated(x, kernel, (2, 2), ((p, p), (p, p)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y + bias


# ----------------------------------------------------------------------------------------------------
# nearest 2x upsampling then conv 3x3

# For output phase d (0: even rows, 1: odd rows), which 3x3 taps fall on the low-resolution pixels of
# the 2x2 window (row p - 1, row p) of padded position p: phase 0 sits at p = a and sees rows a - 1 (tap
# 0) and a (taps 1, 2); phase 1 sits at p = a + 1 and sees rows a (taps 0, 1) and a + 1 (tap 2).
_PHASE_TAPS = {0: ((0,), (1, 2)), 1: ((0, 1), (2,))}


def upsample_conv_kernel(kernel) -> np.ndarray:
  """The (2, 2, C_in, 4 * C_out) kernel of `upsample_conv` equal to nearest 2x upsampling followed by a 3x3
  'SAME' conv (HWIO); float64. Output channel (2 * (1 - dy) + (1 - dx)) * C_out + c is phase (dy, dx) of
  channel c."""
  k = np.asarray(kernel, np.float64)
  _check_3x3(k)
  c_in, c_out = k.shape[2:]
  out = np.zeros((2, 2, c_in, 4, c_out), np.float64)
  for dy in (0, 1):
    for dx in (0, 1):
      slot = 2 * (1 - dy) + (1 - dx)
      for i, rows in enumerate(_PHASE_TAPS[dy]):
        for j, cols in enumerate(_PHASE_TAPS[dx]):
          out[i, j, :, slot] = k[np.ix_(rows, cols)].sum(axis=(0, 1))
  return out.reshape(2, 2, c_in, 4 * c_out)


def upsample_conv_bias(bias) -> np.ndarray:
  """The conv's bias for each of the four phases of `upsample_conv_kernel`'s outputs; float64."""
  return np.tile(np.asarray(bias, np.float64), 4)


def interleave_phases(y):
  """(N, H, W, 4 * C) with channels (phase row, phase column, C) -> (N, 2H, 2W, C), all tensors 4-D."""
  n, h, w, c4 = y.shape
  c = c4 // 4
  y = y.reshape(n * h, w, 2, 2 * c).transpose(0, 2, 1, 3)  # rows (pixel, phase row), columns (pixel, phase column)
  return y.reshape(n, 2 * h, 2 * w, c)


def upsample_conv(x, kernel, bias):
  """x (N, H, W, C_in) -> (N, 2H, 2W, C_out) with `upsample_conv_kernel`'s kernel and
  `upsample_conv_bias`'s bias."""
  _, h, w, _ = x.shape
  y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return interleave_phases(y + bias)[:, 1:2 * h + 1, 1:2 * w + 1, :]

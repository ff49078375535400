"""The project's own check of a .tflite file against the TFLite GPU delegate's rules (export, the GPU check).

  model_fp16.tflite --read_model--> operators (builtin code, version, options, tensor shapes and types)
                    --check-------> GpuVerdict(compatible, violations=[(subgraph, op index, op, reason)])

Why our own: `tf.lite.experimental.Analyzer(gpu_compatibility=True)` in TF 2.21 / ai-edge-litert 2.3
calls ops "compatible" that the delegate rejects (docs/export.md). This is the fast first filter; where a
Vulkan driver exists, litert_gpu.py then runs the graph on LiteRT's own GPU accelerator, whose verdict
is final (the rules were corrected where it disagreed). The rules
restate what the delegate itself does before it takes a node, from two LiteRT files:
  - tflite/tools/versioning/gpu_compatibility.cc: per-operator checks (runtime/constant input counts,
    1-D INT32 GATHER indices, no shrink/ellipsis/new-axis STRIDED_SLICE, paddings shapes, fused
    activations, ADD/MUL broadcasting, the custom ops it knows);
  - tflite/delegates/gpu/common/model_builder.cc: which builtin operators have a parser at all (e.g.
    no GATHER_ND, BROADCAST_TO, CEIL, LOGICAL_OR), the highest op version each parser takes, that every
    non-constant tensor is FLOAT32/FLOAT16 (INT32 only into GATHER and in/out of CAST, BOOL only out of
    comparisons and through CAST/SELECT/LOGICAL_AND), that no tensor has 5 or more dimensions, that a
    comparison's only consumer is a CAST/SELECT to float, and that a BOOL->float CAST has one consumer.
One project choice is stricter than those files: ADD/MUL between inputs of different rank follow the
delegate's *standard* broadcast rule (4-D with 3-D at batch 1, 4-D with [1, 1], 4-D [b, ., ., c] with
[b, c]); the offline checker assumes an "enhanced broadcast" flag that not every delegate build sets.
1-D operands (per-channel constants) are always fine.
Constants: a DEQUANTIZE of a constant FP16 tensor counts as a constant, as in the delegate (it skips
those nodes of FP16 models and reads the weights directly, as FP16: a GATHER table must therefore not be
one, which LiteRT's GPU accelerator showed; see litert_gpu.py, the runtime check that has the last word).
Custom ops: the delegate has kernels for 'Convolution2DTransposeBias', 'MaxPoolingWithArgmax2D',
'MaxUnpooling2D' and 'Resampler' only; 'Flex*' ops need the TensorFlow runtime and are violations.

What this cannot see: numerical precision. With --gpu_precision_loss_allowed the delegate stores
activations in FP16, so e.g. a float index above 2048 is no longer an exact integer (see tflite.py).

The flatbuffer is read with the `schema_py_generated` module that ai-edge-litert (or TensorFlow) ships.
"""
from __future__ import annotations

import collections
import dataclasses
import importlib

CUSTOM_OPS = ('Convolution2DTransposeBias', 'MaxPoolingWithArgmax2D', 'MaxUnpooling2D', 'Resampler')
MAX_RANK = 4


def _schema():
  errors = []
  for name in ('ai_edge_litert.schema_py_generated', 'tensorflow.lite.python.schema_py_generated'):
    try:
      return importlib.import_module(name)
    except ImportError as e:
      errors.append(f'{name}: {e}')
  raise ImportError('reading .tflite files needs ai-edge-litert or tensorflow: ' + '; '.join(errors))


# ----------------------------------------------------------------------------------------------------
# Reading the flatbuffer


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  index: int
  name: str
  shape: tuple
  dtype: str
  is_const: bool


@dataclasses.dataclass(frozen=True)
class OpInfo:
  subgraph: int
  index: int
  name: str                 # builtin operator name, or the custom code of a CUSTOM op
  builtin: str              # builtin operator name ('CUSTOM' for custom ops)
  version: int
  options: dict
  inputs: tuple             # TensorInfo, or None for an omitted optional input
  outputs: tuple

  @property
  def runtime_inputs(self) -> list:
    return [t for t in self.inputs if t is not None and not t.is_const]

  @property
  def const_inputs(self) -> list:
    return [t for t in self.inputs if t is not None and t.is_const]


def _enum_names(enum_class) -> dict[int, str]:
  return {v: k for k, v in vars(enum_class).items() if not k.startswith('_') and isinstance(v, int)}


def read_model(model: bytes | bytearray) -> list[OpInfo]:
  """Every operator of every subgraph with its code, version, options and tensors."""
  s = _schema()
  data = bytes(model)
  if len(data) < 8 or data[4:8] != b'TFL3':
    raise ValueError('not a TFLite flatbuffer (the file identifier TFL3 is missing)')
  m = s.ModelT.InitFromPackedBuf(bytearray(data), 0)
  op_names = _enum_names(s.BuiltinOperator)
  type_names = _enum_names(s.TensorType)

  def has_data(buffer_index):
    if not buffer_index or buffer_index >= len(m.buffers or []):
      return False
    b = m.buffers[buffer_index]
    return (b.data is not None and len(b.data) > 0) or (b.offset or 0) > 1

  ops = []
  for g, subgraph in enumerate(m.subgraphs or []):
    tensors = subgraph.tensors or []
    const = [has_data(t.buffer) for t in tensors]
    infos = []
    for i, op in enumerate(subgraph.operators or []):
      code = m.operatorCodes[op.opcodeIndex]
      builtin = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), f'UNKNOWN_{code.builtinCode}')
      infos.append((i, op, code, builtin))
    # FP16 weights: DEQUANTIZE(const FP16) outputs are constants to the delegate.
    for _, op, _, builtin in infos:
      if builtin == 'DEQUANTIZE' and len(op.inputs) == 1 and op.inputs[0] >= 0 and const[op.inputs[0]] \
          and tensors[op.inputs[0]].type == s.TensorType.FLOAT16:
        for o in op.outputs:
          const[o] = True

    def tensor(index):
      if index < 0:
        return None
      t = tensors[index]
      name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
      shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
      return TensorInfo(index, name, shape, type_names.get(t.type, str(t.type)), const[index])

    for i, op, code, builtin in infos:
      options = {}
      if op.builtinOptions is not None:
        options = {k: v for k, v in vars(op.builtinOptions).items() if isinstance(v, (int, float, bool))}
      name = builtin
      if builtin == 'CUSTOM':
        custom = code.customCode
        name = custom.decode() if isinstance(custom, bytes) else str(custom)
      ops.append(OpInfo(g, i, name, builtin, int(code.version), options,
                        tuple(tensor(t) for t in (op.inputs if op.inputs is not None else ())),
                        tuple(tensor(t) for t in (op.outputs if op.outputs is not None else ()))))
  return ops


def op_histogram(model: bytes | bytearray) -> dict[str, int]:
  """Operator name -> count over all subgraphs (custom ops under their custom code)."""
  return dict(sorted(collections.Counter(op.name for op in read_model(model)).items()))


# ----------------------------------------------------------------------------------------------------
# The rules, per builtin operator. Each returns a reason string, or None when the op is fine.

_SIGN_BIT = 5  # ActivationFunctionType.SIGN_BIT, the only fused activation the delegate lacks
FLOATS = ('FLOAT32', 'FLOAT16')
COMPARISONS = ('GREATER', 'GREATER_EQUAL', 'LESS', 'LESS_EQUAL', 'EQUAL', 'NOT_EQUAL')


def _io(op: OpInfo, runtime: int, outputs: int, const: int | None = None):
  if len(op.runtime_inputs) != runtime:
    return f'expects {runtime} runtime input(s), has {len(op.runtime_inputs)}'
  if const is not None and len(op.const_inputs) != const:
    return f'expects {const} constant input(s), has {len(op.const_inputs)}'
  if len(op.outputs) != outputs:
    return f'expects {outputs} output(s), has {len(op.outputs)}'
  return None


def _one_of(op, *alternatives):
  """None when one (runtime, const) input count fits, else the reason of the first."""
  reasons = [_io(op, r, 1, c) for r, c in alternatives]
  return None if any(r is None for r in reasons) else 'can only handle 1 or 2 operand(s): ' + reasons[0]


def _activation(op):
  if op.options.get('fusedActivationFunction', 0) == _SIGN_BIT:
    return 'fused activation SIGN_BIT is not supported'
  return None


def _broadcast(op):
  a, b = op.inputs[0].shape, op.inputs[1].shape
  if len(a) > 1 and len(b) > 1 and len(a) != len(b):
    long, short = (a, b) if len(a) >= len(b) else (b, a)
    ok = (len(long) == 4 and len(short) == 3 and long[0] == 1) or \
         (len(long) == 4 and short == (1, 1) and long[0] == 1) or \
         (len(long) == 4 and len(short) == 2 and long[0] == short[0] and long[3] == short[1])
    if not ok:
      return f'broadcasting {list(a)} with {list(b)} is not supported'
  return None


def _add_mul(op):
  if len(op.inputs) != 2:
    return f'{op.builtin} needs two input tensors'
  return _broadcast(op) or _activation(op)


def _binary(op):
  return _one_of(op, (2, 0), (1, 1)) or _activation(op)


def _unary(op):
  return _io(op, 1, 1, const=0)


def _conv(op):
  if len(op.runtime_inputs) > 2:
    return f'expects 1 or 2 runtime inputs, has {len(op.runtime_inputs)}'
  if len(op.outputs) != 1:
    return 'expects one output'
  o = op.options
  if min(o.get('strideH', 1), o.get('strideW', 1)) <= 0:
    return 'strides must be positive'
  if min(o.get('dilationHFactor', 1), o.get('dilationWFactor', 1)) <= 0:
    return 'dilations must be positive'
  return _activation(op)


def _depthwise(op):
  reason = _conv(op)
  if reason:
    return reason
  x, w, y = op.inputs[0].shape, op.inputs[1].shape, op.outputs[0].shape
  if len(x) != 4 or len(w) != 4 or len(y) != 4:
    return 'input, filter and output must be 4-D'
  if y[3] != x[3] * op.options.get('depthMultiplier', 1) or w[3] != y[3]:
    return 'channel counts do not match the depth multiplier'
  return None


def _fully_connected(op):
  if op.options.get('weightsFormat', 0) != 0:
    return 'only the default weights format is supported'
  if len(op.runtime_inputs) > 2:
    return 'more than 2 runtime inputs'
  if op.options.get('keepNumDims') and len(op.inputs[0].shape) != len(op.outputs[0].shape):
    return 'keep_num_dims with input and output of different rank'
  return _activation(op)


def _gather(op):
  reason = _one_of(op, (2, 0), (1, 1))
  if reason:
    return reason
  indices = op.inputs[1]
  if len(indices.shape) != 1:
    return f'indices must be 1-D, got shape {list(indices.shape)}'
  if indices.dtype != 'INT32':
    return f'indices must be INT32, got {indices.dtype}'
  return None


def _strided_slice(op):
  o = op.options
  for mask in ('ellipsisMask', 'newAxisMask', 'shrinkAxisMask'):
    if o.get(mask):
      return f'{mask} is not supported (slice with x[..., a:b], not x[..., a])'
  if len(op.inputs) < 4:
    return 'needs 4 inputs'
  if len(op.inputs[0].shape) not in (3, 4):
    return f'input must be 3-D or 4-D, got {len(op.inputs[0].shape)}-D'
  return None


def _slice(op):
  if len(op.inputs) < 3:
    return 'needs 3 inputs'
  if len(op.inputs[0].shape) not in (3, 4):
    return f'input must be 3-D or 4-D, got {len(op.inputs[0].shape)}-D'
  return None


def _pad(op):
  if op.builtin == 'MIRROR_PAD' and op.options.get('mode', 0) != 0:
    return 'only REFLECT mirror padding is supported'
  reason = _io(op, 1, 1)
  if reason:
    return reason
  if len(op.inputs) < 2:
    return 'needs a paddings tensor'
  p = op.inputs[1].shape
  if len(p) != 2 or p[0] not in (3, 4) or p[1] != 2:
    return f'paddings must be 4x2 or 3x2, got {list(p)}'
  return None


def _reduce(op):
  reason = _io(op, 1, 1)
  if reason:
    return reason
  axes = op.inputs[1]
  if not axes.is_const or axes.dtype != 'INT32':
    return 'axes must be a constant INT32 tensor'
  return None


def _mean(op):
  return _io(op, 1, 1, const=1) or _reduce(op)


def _cast(op):
  reason = _io(op, 1, 1)
  if reason:
    return reason
  a, b = op.inputs[0].dtype, op.outputs[0].dtype
  if (a == 'BOOL' and b in FLOATS) or (a in FLOATS and b == 'BOOL') or \
     (a in ('FLOAT32', 'INT32') and b in ('FLOAT32', 'INT32')):
    return None
  return f'cast from {a} to {b} is not supported'


def _dequantize(op):
  if len(op.inputs) != 1 or len(op.outputs) != 1:
    return 'expects one input and one output'
  if op.inputs[0].dtype != 'FLOAT16':
    return f'only FP16 weights are dequantized by the float delegate, not {op.inputs[0].dtype}'
  return None


def _pool(op):
  reason = _io(op, 1, 1)
  if reason:
    return reason
  o = op.options
  if min(o.get('filterHeight', 1), o.get('filterWidth', 1), o.get('strideH', 1), o.get('strideW', 1)) <= 0:
    return 'kernel and strides must be positive'
  return _activation(op)


def _resize_bilinear(op):
  if op.options.get('alignCorners') and op.options.get('halfPixelCenters'):
    return 'align_corners and half_pixel_centers cannot both be set'
  return _io(op, 1, 1)


def _block_size(op):
  reason = _io(op, 1, 1)
  if reason:
    return reason
  if op.options.get('blockSize', 2) <= 1:
    return 'block_size must be > 1'
  return None


def _softmax(op):
  return None if op.options.get('beta', 1.0) == 1.0 else 'beta != 1 is not supported'


def _select(op):
  if len(op.inputs) != 3 or len(op.outputs) != 1:
    return 'expects 3 inputs and 1 output'
  if op.inputs[0].dtype not in ('BOOL',) + FLOATS:
    return 'the condition must be BOOL or float'
  out = op.outputs[0].shape
  for t in op.inputs[1:]:
    if t.shape and t.shape != out and (len(t.shape) > 1 or t.shape[0] > 1):
      return 'if/else tensors must have the output shape or be scalars'
  return None


def _batch_matmul(op):
  return None if len(op.inputs) == 2 and len(op.outputs) == 1 else 'expects 2 inputs and 1 output'


def _add_n(op):
  return None if len(op.inputs) == 2 else 'only 2 inputs are supported'


def _transpose_conv(op):
  if len(op.runtime_inputs) > 2:
    return f'expects 1 or 2 runtime inputs, has {len(op.runtime_inputs)}'
  if min(op.options.get('strideH', 1), op.options.get('strideW', 1)) <= 0:
    return 'strides must be positive'
  return None


def _always(op):
  return None


def _rule(check, max_version=None):
  return check, max_version


_ELEMENTWISE_UNARY = ('ABS', 'COS', 'ELU', 'EXP', 'FLOOR', 'GELU', 'LOG', 'LOGISTIC', 'NEG', 'RSQRT', 'SIGN', 'SIN',
                      'SQRT', 'SQUARE', 'TANH')
_ELEMENTWISE_BINARY = ('DIV', 'EQUAL', 'FLOOR_DIV', 'FLOOR_MOD', 'GREATER', 'GREATER_EQUAL', 'LESS', 'LESS_EQUAL',
                       'LOGICAL_AND', 'MAXIMUM', 'MINIMUM', 'NOT_EQUAL', 'POW', 'SQUARED_DIFFERENCE', 'SUB')

# builtin operator -> (check, highest op version the delegate's parser takes, or None for no limit).
# The keys are exactly the builtin ops model_builder.cc has a parser for.
_RULES: dict[str, tuple] = dict(
    ADD=_rule(_add_mul, 2), MUL=_rule(_add_mul, 3), ADD_N=_rule(_add_n, 2),
    CONV_2D=_rule(_conv, 6), DEPTHWISE_CONV_2D=_rule(_depthwise, 6), TRANSPOSE_CONV=_rule(_transpose_conv, 3),
    FULLY_CONNECTED=_rule(_fully_connected, 9), BATCH_MATMUL=_rule(_batch_matmul),
    AVERAGE_POOL_2D=_rule(_pool, 2), MAX_POOL_2D=_rule(_pool, 2),
    GATHER=_rule(_gather, 1), STRIDED_SLICE=_rule(_strided_slice, 4), SLICE=_rule(_slice, 2),
    PAD=_rule(_pad, 2), PADV2=_rule(_pad, 2), MIRROR_PAD=_rule(_pad, 2),
    RESHAPE=_rule(lambda op: _io(op, 1, 1), 1), TRANSPOSE=_rule(lambda op: _io(op, 1, 1), 4),
    TILE=_rule(lambda op: _io(op, 1, 1)),
    RESIZE_BILINEAR=_rule(_resize_bilinear, 3), RESIZE_NEAREST_NEIGHBOR=_rule(lambda op: _io(op, 1, 1), 3),
    MEAN=_rule(_mean), SUM=_rule(_reduce), REDUCE_MAX=_rule(_reduce), REDUCE_MIN=_rule(_reduce),
    REDUCE_PROD=_rule(_reduce),
    CAST=_rule(_cast), DEQUANTIZE=_rule(_dequantize, 3), QUANTIZE=_rule(lambda op: _io(op, 1, 1), 2),
    DEPTH_TO_SPACE=_rule(_block_size), SPACE_TO_DEPTH=_rule(_block_size, 2), SOFTMAX=_rule(_softmax, 2),
    SELECT=_rule(_select, 1), SELECT_V2=_rule(_select, 1),
    CONCATENATION=_rule(_always, 2), PACK=_rule(_always), UNPACK=_rule(_always),
    SPLIT=_rule(_always), SPLIT_V=_rule(_always),
    RELU=_rule(_always, 2), RELU6=_rule(_always, 2), RELU_0_TO_1=_rule(_always, 2), RELU_N1_TO_1=_rule(_always, 2),
    LEAKY_RELU=_rule(_always, 2), PRELU=_rule(_always, 1), HARD_SWISH=_rule(lambda op: _io(op, 1, 1)),
    **{name: _rule(_unary, 2) for name in _ELEMENTWISE_UNARY},
    **{name: _rule(_binary, 2) for name in _ELEMENTWISE_BINARY},
)


def _tensor_types(op: OpInfo):
  """model_builder.cc: non-constant tensors are float, with a few typed exceptions per operator."""
  ins, outs = set(FLOATS), set(FLOATS)
  if op.builtin in COMPARISONS:
    outs.add('BOOL')
  if op.builtin == 'CAST':
    ins |= {'BOOL', 'INT32'}
    outs |= {'INT32', 'BOOL'}
  if op.builtin in ('SELECT', 'SELECT_V2'):
    ins.add('BOOL')
  if op.builtin == 'LOGICAL_AND':
    ins.add('BOOL')
    outs.add('BOOL')
  if op.builtin == 'GATHER':
    ins.add('INT32')
  for kind, tensors, allowed in (('input', op.inputs, ins), ('output', op.outputs, outs)):
    for t in tensors:
      if t is not None and not t.is_const and t.dtype not in allowed:
        return (f'{kind} tensor {t.name!r} is {t.dtype}; the GPU delegate takes '
                f'{"/".join(sorted(allowed))} there')
  return None


def _graph_rules(op: OpInfo, consumers: dict, producers: dict):
  """model_builder.cc: comparisons feed exactly one CAST/SELECT to float; a BOOL->float CAST has one
  producer and one consumer (it is fused with the comparison)."""
  if op.builtin in COMPARISONS:
    users = consumers.get((op.subgraph, op.outputs[0].index), [])
    if len(users) != 1:
      return f'its BOOL output must have exactly one consumer, has {len(users)}'
    user = users[0]
    if user.builtin not in ('CAST', 'SELECT', 'SELECT_V2') or user.outputs[0].dtype not in FLOATS:
      return f'its BOOL output must go straight into a CAST/SELECT to float, not into {user.name}'
  if op.builtin == 'GATHER' and op.inputs and op.inputs[0] is not None:
    # Found by running LiteRT's GPU accelerator: it reads a dequantized FP16 constant as FP16, so a GATHER
    # table from a DEQUANTIZE has an FP16 input and an FP32 output ("Input / output dtype mismatch").
    # graph_edits.gather_tables_in_float32 stores such tables as FP32.
    if any(p.builtin == 'DEQUANTIZE' for p in producers.get((op.subgraph, op.inputs[0].index), [])):
      return ('its table is a DEQUANTIZE of an FP16 constant, which the delegate reads as FP16: input and output '
              'types differ (store the table in FP32: graph_edits.gather_tables_in_float32)')
  if op.builtin == 'CAST' and op.inputs and op.inputs[0] is not None and op.inputs[0].dtype == 'BOOL' \
      and op.outputs[0].dtype in FLOATS:
    source = op.inputs[0].index
    if len(producers.get((op.subgraph, source), [])) != 1 or len(consumers.get((op.subgraph, source), [])) != 1:
      return 'a BOOL->float CAST needs an input with one producer and one consumer'
    if len(consumers.get((op.subgraph, op.outputs[0].index), [])) != 1:
      return 'a BOOL->float CAST must have exactly one consumer (not be a model output)'
  return None


def _custom(op):
  if op.name.startswith('Flex'):
    return f'Flex op {op.name} needs the TensorFlow select-ops runtime, which the GPU delegate cannot run'
  if op.name not in CUSTOM_OPS:
    return f'custom op {op.name!r} has no GPU kernel (the delegate knows {", ".join(CUSTOM_OPS)})'
  if op.name == 'Resampler':
    return _io(op, 2, 1)
  return None


@dataclasses.dataclass(frozen=True)
class Violation:
  subgraph: int
  op_index: int
  op_name: str
  reason: str

  def __str__(self):
    where = f'op {self.op_index}' if self.subgraph == 0 else f'subgraph {self.subgraph} op {self.op_index}'
    return f'{where} {self.op_name}: {self.reason}'


@dataclasses.dataclass(frozen=True)
class GpuVerdict:
  compatible: bool
  violations: tuple
  histogram: dict
  num_ops: int

  def summary(self) -> str:
    if self.compatible:
      return f'GPU-compatible: all {self.num_ops} ops pass the GPU delegate rules'
    lines = [f'not GPU-compatible: {len(self.violations)} of {self.num_ops} ops break the GPU delegate rules']
    lines += [f'  {v}' for v in self.violations[:30]]
    if len(self.violations) > 30:
      lines.append(f'  ... and {len(self.violations) - 30} more')
    return '\n'.join(lines)

  def to_dict(self) -> dict:
    return dict(compatible=self.compatible, num_ops=self.num_ops, histogram=self.histogram,
                violations=[dataclasses.asdict(v) for v in self.violations])


def check_op(op: OpInfo, consumers: dict | None = None, producers: dict | None = None) -> list[str]:
  """Reasons why the GPU delegate would not take this operator (empty when it would).

  consumers/producers: (subgraph, tensor index) -> ops, for the rules that look at neighbours."""
  reasons = []
  for t in op.inputs + op.outputs:
    if t is not None and len(t.shape) > MAX_RANK:
      reasons.append(f'tensor {t.name!r} is {len(t.shape)}-D {list(t.shape)}; the GPU delegate takes at most '
                     f'{MAX_RANK}-D')
      break
  if op.builtin == 'CUSTOM':
    reason = _custom(op)
    if reason:
      reasons.append(reason)
    return reasons
  if op.builtin not in _RULES:
    return reasons + [f'{op.builtin} is not supported by the GPU delegate']
  check_fn, max_version = _RULES[op.builtin]
  if max_version is not None and op.version > max_version:
    reasons.append(f'version {op.version} is above the {max_version} the GPU delegate takes')
  for reason in (check_fn(op), _tensor_types(op), _graph_rules(op, consumers or {}, producers or {})):
    if reason:
      reasons.append(reason)
  return reasons


def check(model: bytes | bytearray) -> GpuVerdict:
  """Check every operator of a .tflite model (bytes) against the GPU delegate's rules."""
  ops = read_model(model)
  consumers, producers = collections.defaultdict(list), collections.defaultdict(list)
  for op in ops:
    for t in op.inputs:
      if t is not None:
        consumers[op.subgraph, t.index].append(op)
    for t in op.outputs:
      producers[op.subgraph, t.index].append(op)
  violations = [Violation(op.subgraph, op.index, op.name, reason)
                for op in ops for reason in check_op(op, consumers, producers)]
  histogram = dict(sorted(collections.Counter(op.name for op in ops).items()))
  return GpuVerdict(not violations, tuple(violations), histogram, len(ops))


def check_file(path) -> GpuVerdict:
  with open(path, 'rb') as f:
    return check(f.read())

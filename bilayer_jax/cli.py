"""The `bilayer-jax` command line: one entry point, one subcommand per job.

  bilayer-jax info --config paper                 parameter and MAC counts of every network
  bilayer-jax import-torch RUN_DIR --epoch N --out CHECKPOINT_DIR
                                                  the authors' PyTorch run -> a checkpoint bilayer_jax.load opens
  bilayer-jax train --config base_model[:small] --workdir DIR [--config.key=value ...]
  bilayer-jax animate --checkpoint C --source PHOTO --driver VIDEO --out OUT.mp4 [--side-by-side]
  bilayer-jax export CHECKPOINT --source PHOTO --out DIR   FP16/FP32 TFLite graphs of one avatar + report.json
  bilayer-jax export CHECKPOINT --out DIR                  the two-file export: a per-avatar and a per-frame graph
                                                           for every avatar (FP16/FP32 of each) + report.json
  bilayer-jax preprocess INPUT_DIR OUTPUT_DIR [...]          raw face videos -> training records
  bilayer-jax evaluate --checkpoint C --data DATASET --out DIR
  bilayer-jax demo --out demo_out                            the quickstart
  bilayer-jax tables --out DIR [--evaluation EVAL.json] [--export-report report.json]
"""
from __future__ import annotations

import argparse
import pathlib
import signal
import sys

from bilayer_jax import user_errors


def _load_config(spec: str):
  """A named model size ('paper', 'small', 'tiny', 'micro') or an experiment config (config_files)."""
  from bilayer_jax import config as config_lib
  from bilayer_jax import config_files

  if spec in config_lib.SIZES:
    return config_lib.get_config(spec)
  try:
    config = config_files.load(spec)
  except config_files.ConfigError as e:
    raise SystemExit(f'--config: {e} (or a model size {list(config_lib.SIZES)})') from None
  model = config.model if 'model' in config else config
  config_lib.validate(model)
  return model


def cmd_info(args) -> int:
  from bilayer_jax import complexity

  config = _load_config(args.config)
  if args.no_harmonics:
    config.pse_use_harmonic_enc = False
  print(complexity.format_report(config, complexity.report(config)))
  return 0


def cmd_import_torch(args) -> int:
  from bilayer_jax import complexity
  from bilayer_jax.interop import torch_checkpoint

  out = pathlib.Path(args.out)
  _, config, variables = torch_checkpoint.import_to_checkpoint(
      args.run_dir, out, epoch=args.epoch, networks=args.networks, overwrite=args.overwrite)
  counts = complexity.parameter_counts(config)
  print(f'wrote {out}')
  for name in variables:
    print(f'  {name:22s} {counts[name]:>12,d} parameters')
  print(f'spectral norm on: {config.spn_networks or "none"}; harmonic keypoint encoding: '
        f'{"on" if config.pse_use_harmonic_enc else "off"}')
  return 0


# Exit codes (README, Exit codes): a scheduler tells a finished run from one to requeue.
EXIT_BAD_INPUT = 2      # every command: a user fault (user_errors: the config, a file, the disk, the workdir in use)
EXIT_DIVERGED = 3       # a loss went NaN/Inf; the last good checkpoint is kept
EXIT_STOPPED = 75       # SIGTERM (preemption): state saved, rerun to continue (sysexits' EX_TEMPFAIL)


def cmd_train(args, overrides) -> int:
  from bilayer_jax import config_files
  from bilayer_jax.train import loop
  from bilayer_jax.train.workdir_lock import WorkdirBusy

  try:
    config = config_files.apply_overrides(config_files.load(args.config), overrides)
    summary = loop.train(config, args.workdir)
  except loop.TrainingDiverged as e:
    print(f'train: {e}', file=sys.stderr)
    return EXIT_DIVERGED
  except WorkdirBusy as e:
    print(f'train: {e}', file=sys.stderr)
    return EXIT_BAD_INPUT
  if summary.get('stopped'):
    print(f'train: stopped by {summary["stopped"]} at step {summary["step"]}, state saved; exit code {EXIT_STOPPED} '
          '(rerun the same command to continue)', file=sys.stderr)
    return EXIT_STOPPED
  print(f'train: finished at step {summary["step"]}')
  return 0


def cmd_animate(args) -> int:
  import bilayer_jax
  from bilayer_jax import animate
  from data_pipelines.faces import landmarks

  animate.check_output(args.out, args.overwrite)  # before any loading or decoding
  pair = args.backend == 'tflite' and args.tflite and pathlib.Path(args.tflite).is_dir()
  if not pair and not args.checkpoint:
    raise SystemExit('animate: --checkpoint is needed (or --backend tflite --tflite FOLDER of a two-file export)')
  model = None if pair else bilayer_jax.load(args.checkpoint)  # a two-file export needs no checkpoint
  backend = landmarks.make_backend(args.landmarks)
  photo = animate.read_image(args.source)
  frames, fps = animate.read_video(args.driver, args.max_frames)
  summary = animate.animate(model, photo, frames, args.out, backend, fps=fps, enhance=not args.no_enhance,
                            side_by_side=args.side_by_side, smoothing=args.smoothing,
                            render_backend=args.backend, tflite_path=args.tflite, overwrite=args.overwrite,
                            face=args.face, tflite_precision=args.tflite_precision)
  print(animate.format_summary(summary, args.out))
  return 0


def cmd_demo(args) -> int:
  from bilayer_jax import demo

  try:
    result = demo.run(args.out, minutes=args.minutes, steps=args.steps)
  except demo.StageFailed as e:
    print(str(e), file=sys.stderr)
    return 1
  print(demo.metric_table_md(result['metrics']))
  return 0


def cmd_export(args) -> int:
  import json

  from bilayer_jax import animate
  from bilayer_jax.export import tflite
  from data_pipelines.faces import crop as crop_lib
  from data_pipelines.faces import landmarks

  import bilayer_jax

  if args.source is None:  # the two-file export: one pair of graphs for every avatar
    from bilayer_jax.export import two_file
    report = two_file.export_checkpoint_pair(
        args.checkpoint, args.out, photos=args.check_photo or (), landmarks=args.landmarks, with_mask=args.with_mask,
        allow_cpu_ops=args.allow_cpu_ops, latency_runs=args.latency_runs, gpu_check=args.gpu_check)
    print(json.dumps({k: report[k] for k in ('interface', 'accuracy', 'gpu_ready')}, indent=2, default=str)[:3000])
    print(f'wrote {args.out}')
    return 0
  if args.check_photo:
    raise SystemExit('export: --check-photo is for the two-file export (without --source)')
  tflite.check_output(args.out)  # before any loading or converting
  photo = animate.read_image(args.source)
  size = bilayer_jax.checkpoint.load(args.checkpoint)[0].image_size
  face = crop_lib.prepare_face(photo, landmarks.make_backend(args.landmarks), size, face=args.face)
  print(crop_lib.describe_choice(face, args.source))
  report = tflite.export_checkpoint(args.checkpoint, face['image'], face['keypoints'], None, args.out,
                                    enhance=False if args.no_enhance else None, with_mask=args.with_mask,
                                    allow_cpu_ops=args.allow_cpu_ops, latency_runs=args.latency_runs,
                                    gpu_check=args.gpu_check)
  print(json.dumps(report, indent=2, default=str)[:3000])
  print(f'wrote {args.out}')
  return 0


def cmd_preprocess(args) -> int:
  from data_pipelines import preprocess
  return preprocess.run_from_args(args)


def cmd_evaluate(args) -> int:
  import pathlib

  import bilayer_jax
  from bilayer_jax import evaluate
  from data_pipelines import videos

  model = bilayer_jax.load(args.checkpoint)
  data = list(videos.iter_videos(args.data, args.split, max_videos=args.max_videos, max_frames=args.max_frames))
  if not data:
    raise ValueError(f'no videos in split {args.split!r} of {args.data}')
  scorer = evaluate.Scorer()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  enhance = not args.no_enhance
  for name, fn in (('self_reenactment', evaluate.self_reenactment), ('cross_identity', evaluate.cross_identity)):
    if name == 'cross_identity' and len(data) < 2:
      print('cross-identity needs two videos or more; skipped')
      continue
    result = fn(model, data, scorer, max_targets=args.max_targets, enhance=enhance)
    evaluate.write(result, out / f'{name}.json', out / f'{name}.md', checkpoint=args.checkpoint, data=args.data)
    print(evaluate.markdown(result, checkpoint=args.checkpoint, data=args.data))
  return 0


def cmd_tables(args) -> int:
  from bilayer_jax import tables

  files = tables.write_tables(args.out, args.export_report, args.evaluation, args.checkpoint_size, args.label)
  for path in files:
    print(f'wrote {path}')
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='bilayer-jax', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument('--debug', action='store_true',
                      help=f'show the traceback of an error instead of its one-line message (or {user_errors.DEBUG_ENV}=1)')
  add = lambda name, **kw: sub.add_parser(name, parents=[common], **kw)

  p = add('info', help='parameter and MAC counts of every network')
  p.add_argument('--config', default='paper', help='model size (paper, small, tiny, micro) or an experiment config')
  p.add_argument('--no-harmonics', action='store_true', help='count the keypoints embedder without harmonics')
  p.set_defaults(func=cmd_info)

  p = add('import-torch', help="convert the authors' PyTorch run folder to a checkpoint")
  p.add_argument('run_dir', help='folder with args.txt and checkpoints/{epoch}_{network}.pth')
  p.add_argument('--epoch', type=int, default=None, help='epoch to import (default: the latest found)')
  p.add_argument('--out', required=True, help='checkpoint folder to write (must not exist)')
  p.add_argument('--networks', nargs='*', default=None, help='reference network names (default: all found)')
  p.add_argument('--overwrite', action='store_true', help='replace an existing --out folder')
  p.set_defaults(func=cmd_import_torch)

  p = add('train', help='train (or resume) a model; overrides as --config.key=value')
  p.add_argument('--config', required=True,
                 help='a packaged experiment (base_model, texture_enhancer, tiny_cpu, demo) or a .py file, '
                      'each with :OPTIONS (comma-separated; see the config)')
  p.add_argument('--workdir', required=True, help='checkpoints, TensorBoard logs, images, exports')
  p.set_defaults(func=cmd_train, takes_overrides=True)

  p = add('animate', help='drive a photo with a video')
  p.add_argument('--checkpoint', default=None, help='checkpoint folder (not needed with --tflite FOLDER)')
  p.add_argument('--source', required=True, help='photo of the person to animate')
  p.add_argument('--driver', required=True, help='driving video')
  p.add_argument('--out', required=True, help='output .mp4')
  p.add_argument('--backend', default='jax', choices=['jax', 'tflite'], help='renderer of the frames')
  p.add_argument('--tflite', default=None,
                 help='with --backend tflite: an exported model_fp16/fp32.tflite (one avatar, exported with --source '
                      'from this photo), or the folder of a two-file export (any photo; no checkpoint needed)')
  p.add_argument('--tflite-precision', choices=('fp16', 'fp32'), default='fp16',
                 help='with --tflite FOLDER: which pair of its files runs')
  p.add_argument('--side-by-side', action='store_true', help='write driver | output')
  p.add_argument('--no-enhance', action='store_true', help='skip the texture enhancer')
  p.add_argument('--landmarks', default='dlib', help='landmark backend: dlib or face-alignment')
  p.add_argument('--face', type=int, default=None,
                 help='which face of the photo to animate when it has several: 0 = the largest (default), 1 = the '
                      'next largest, ...')
  p.add_argument('--smoothing', type=float, default=1.0, help='temporal smoothing of driver landmarks (frames)')
  p.add_argument('--max-frames', type=int, default=None)
  p.add_argument('--overwrite', action='store_true')
  p.set_defaults(func=cmd_animate)

  p = add('export', help='FP16/FP32 TFLite graphs for the phone GPU: one avatar (--source) or every avatar')
  p.add_argument('checkpoint')
  p.add_argument('--source', default=None,
                 help='photo whose avatar is baked into one per-frame graph; without it, the two-file export: '
                      'avatar_fp16/fp32.tflite (photo -> avatar) and frame_fp16/fp32.tflite (avatar + pose -> frame)')
  p.add_argument('--out', required=True, help='folder for the .tflite files and report.json')
  p.add_argument('--check-photo', action='append', default=None,
                 help='(two-file export) a face photo for the accuracy checks; repeatable (default: random inputs)')
  p.add_argument('--face', type=int, default=None,
                 help='which face of the photo to export when it has several: 0 = the largest (default), ...')
  p.add_argument('--with-mask', action='store_true', help='also output the predicted mask')
  p.add_argument('--allow-cpu-ops', action='store_true', help='write a graph even if the GPU delegate rejects it')
  p.add_argument('--no-enhance', action='store_true')
  p.add_argument('--landmarks', default='dlib')
  p.add_argument('--latency-runs', type=int, default=50)
  p.add_argument('--gpu-check', choices=('auto', 'require', 'off'), default='auto',
                 help="run the graphs on LiteRT's GPU accelerator: when a Vulkan driver exists (auto), "
                      'or fail without one (require), or not (off)')
  p.set_defaults(func=cmd_export)

  try:
    from data_pipelines import preprocess as preprocess_lib
    p = add('preprocess', help='raw face videos -> sharded training records (+ manifest)')
    preprocess_lib.build_parser(p)
    p.set_defaults(func=cmd_preprocess)
  except ImportError:  # data_pipelines is not importable outside a source checkout
    pass

  p = add('evaluate', help="the paper's self-reenactment and cross-identity protocols")
  p.add_argument('--checkpoint', required=True)
  p.add_argument('--data', required=True, help='a bilayer-jax preprocess output folder')
  p.add_argument('--split', default='test')
  p.add_argument('--out', default='evaluation', help='folder for JSON (per-video results) and Markdown')
  p.add_argument('--max-videos', type=int, default=None)
  p.add_argument('--max-frames', type=int, default=None, help='frames read per video')
  p.add_argument('--max-targets', type=int, default=32, help='target frames scored per video')
  p.add_argument('--no-enhance', action='store_true')
  p.set_defaults(func=cmd_evaluate)

  p = add('demo', help='the quickstart: preprocess, train, evaluate, export and report on CPU')
  p.add_argument('--out', default='demo_out')
  p.add_argument('--minutes', type=float, default=14.0, help='training time limit')
  p.add_argument('--steps', type=int, default=None, help='training steps (default: experiments/demo.py)')
  p.set_defaults(func=cmd_demo)

  p = add('tables', help="the paper's tables (complexity, speed, quality) as Markdown + a plot")
  p.add_argument('--out', required=True)
  p.add_argument('--evaluation', default=None, help='JSON written by bilayer-jax evaluate')
  p.add_argument('--export-report', default=None, help='report.json written by bilayer-jax export')
  p.add_argument('--checkpoint-size', default=None, help='model size of the evaluated checkpoint (for the plot)')
  p.add_argument('--label', default='', help='which checkpoint and data produced the measured numbers')
  p.set_defaults(func=cmd_tables)
  return parser


EXIT_TERMINATED = 143  # SIGTERM ended a command other than train (128 + 15); its partial outputs are removed


class Terminated(BaseException):
  """SIGTERM, raised in the main thread so that every `finally` (temporary files, partial outputs) runs."""


def _terminate(signum, frame):
  raise Terminated()


def main(argv=None) -> int:
  from bilayer_jax import runtime
  if argv is None:  # started as a command, not called from Python
    runtime.setup_allocator()
  runtime.configure_xla_cpu()  # no effect once JAX's backend exists (in-process callers)
  args, rest = build_parser().parse_known_args(argv)
  if rest and not getattr(args, 'takes_overrides', False):
    raise SystemExit(f'unrecognized arguments: {" ".join(rest)}')
  if argv is None and args.command != 'train':  # train stops gracefully on SIGTERM itself (exit 75)
    signal.signal(signal.SIGTERM, _terminate)
  try:
    return args.func(args, rest) if getattr(args, 'takes_overrides', False) else args.func(args)
  except Terminated:
    print(f'{args.command}: stopped by SIGTERM; partial outputs removed', file=sys.stderr)
    return EXIT_TERMINATED
  except user_errors.USER_FAULTS as e:
    if user_errors.debug_requested(getattr(args, 'debug', False)):
      raise
    print(f'{args.command}: {user_errors.describe(e)}  (--debug shows the traceback)', file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == '__main__':
  sys.exit(main())

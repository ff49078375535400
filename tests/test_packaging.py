"""The wheel as a package index would serve it: built from the source tree, put alone on the path (no
editable install, no checkout as the working directory), it runs `info`, two training steps of the tiny
synthetic config named without a path, and the export of the trained model."""
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# What a source checkout has beside the package that the build must not see or write into.
NOT_SOURCE = shutil.ignore_patterns('.git', '.venv', 'build', 'dist', '*.egg-info', '__pycache__', 'demo_out',
                                    'tests', 'benchmarks', '.pytest_cache')


@pytest.fixture(scope='module')
def wheel_site(tmp_path_factory):
  """The wheel, built from a copy of the tree (a build writes build/ and egg-info beside the sources),
  unpacked into a folder of its own: that folder is all the project code the commands can import."""
  tmp = tmp_path_factory.mktemp('wheel')
  source = tmp / 'source'
  shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--quiet', str(source), '-w', str(tmp / 'dist')],
                 check=True, cwd=tmp)
  wheels = list((tmp / 'dist').glob('bilayer_jax-*.whl'))
  assert len(wheels) == 1, wheels
  site = tmp / 'site'
  with zipfile.ZipFile(wheels[0]) as z:
    z.extractall(site)
  return site, sorted(n for n in zipfile.ZipFile(wheels[0]).namelist())


def run(site, cwd, *args, timeout=900):
  env = dict(os.environ)
  env['PYTHONPATH'] = str(site)
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_wheel_holds_every_package_the_commands_use(wheel_site):
  _, names = wheel_site
  for wanted in ('bilayer_jax/cli.py', 'bilayer_jax/train/__init__.py', 'bilayer_jax/train/loop.py',
                 'bilayer_jax/config_files.py', 'data_pipelines/faces/assets/selfie_segmentation.tflite',
                 'experiments/__init__.py', 'experiments/tiny_cpu.py', 'experiments/base_model.py',
                 'data_pipelines/preprocess.py', 'data_pipelines/input_pipeline.py'):
    assert wanted in names, f'{wanted} is not in the wheel'
  for package in {pathlib.PurePosixPath(n).parent for n in names if n.endswith('.py')}:
    assert f'{package}/__init__.py' in names, f'{package} has modules but no __init__.py in the wheel'


def test_the_installed_wheel_trains_and_exports(wheel_site, tmp_path):
  site, _ = wheel_site
  where = run(site, tmp_path, '-c', 'import bilayer_jax, experiments, data_pipelines; '
              'print(bilayer_jax.__file__, experiments.__file__, data_pipelines.__file__)')
  assert where.returncode == 0, where.stderr
  assert all(pathlib.Path(p).is_relative_to(site) for p in where.stdout.split()), where.stdout

  info = run(site, tmp_path, '-m', 'bilayer_jax.cli', 'info', '--config', 'tiny')
  assert info.returncode == 0 and "model size 'tiny'" in info.stdout, info.stderr[-2000:]

  train = run(site, tmp_path, '-m', 'bilayer_jax.cli', 'train', '--config', 'tiny_cpu:synthetic',
              '--workdir', 'run', '--config.training.num_steps=2', '--config.training.bn_stats_batches=1',
              '--config.image_every=0', '--config.log_every=1')
  assert train.returncode == 0, train.stderr[-3000:]
  exports = sorted((tmp_path / 'run' / 'inference').glob('step_*'))
  assert exports, 'training wrote no inference checkpoint'

  from bilayer_jax import demo
  photo = demo.asset_paths()['grace_hopper']
  export = run(site, tmp_path, '-m', 'bilayer_jax.cli', 'export', str(exports[-1]), '--source', str(photo),
               '--out', 'avatar', '--latency-runs', '2')
  assert export.returncode == 0, export.stderr[-3000:]
  assert (tmp_path / 'avatar' / 'model_fp16.tflite').is_file() and (tmp_path / 'avatar' / 'report.json').is_file()

  typo = run(site, tmp_path, '-m', 'bilayer_jax.cli', 'train', '--config', 'tiny_cpu:synthetc', '--workdir', 'x')
  assert typo.returncode == 2 and 'synthetc' in typo.stderr

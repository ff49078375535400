"""Faults a user can fix: one line naming the file and what to do, exit 2, the traceback only with --debug."""
import errno
import os
import subprocess
import sys
import textwrap
import time

import pytest

from bilayer_jax import checkpoint, cli, user_errors


def test_file_system_faults_name_the_path_and_the_remedy():
  full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), '/runs/a/checkpoints/5')
  assert user_errors.describe(full) == ('/runs/a/checkpoints/5: no space left on the device: free space, or use '
                                        'a folder on another disk')
  read_only = OSError(errno.EROFS, os.strerror(errno.EROFS), '/mnt/ro/train.lock')
  assert user_errors.describe(read_only).startswith('/mnt/ro/train.lock: the file system is read-only')
  ours = OSError(errno.ENOSPC, 'not enough free space for a checkpoint (needs 5 MiB)', '/w/checkpoints')
  assert user_errors.describe(ours) == '/w/checkpoints: not enough free space for a checkpoint (needs 5 MiB)'
  # tensorstore (Orbax) wraps the OS error in a ValueError: the errno and the file are read from its text
  wrapped = ValueError('RESOURCE_EXHAUSTED: Error writing "x/0.0" in OCDBT database at local file "/w/ckpt/5/": '
                       'Failed writing: "/w/ckpt/5/d/512b": Failed to write 146416 bytes to file 6: No space left '
                       "on device [os_error_code='28']")
  assert user_errors.describe(wrapped) == '/w/ckpt/5/d/512b: no space left on the device: free space, or use a ' \
                                          'folder on another disk'
  assert user_errors.describe(ValueError('a message of ours')) == 'a message of ours'
  assert user_errors.describe(FileNotFoundError('x.png: no such image file')) == 'x.png: no such image file'


def test_debug_comes_from_the_flag_or_the_environment(monkeypatch):
  monkeypatch.delenv(user_errors.DEBUG_ENV, raising=False)
  assert not user_errors.debug_requested() and user_errors.debug_requested(True)
  monkeypatch.setenv(user_errors.DEBUG_ENV, '1')
  assert user_errors.debug_requested()
  monkeypatch.setenv(user_errors.DEBUG_ENV, '0')
  assert not user_errors.debug_requested()


def test_export_of_a_training_workdir_points_at_its_inference_checkpoint(tmp_path, capsys):
  import bilayer_jax

  workdir = tmp_path / 'run'
  (workdir / 'checkpoints').mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match='without an inference checkpoint yet'):
    checkpoint.load(workdir)
  model = bilayer_jax.init('micro', seed=0)
  for step in (10, 20):
    checkpoint.save(workdir / 'inference' / f'step_{step:07d}', model.config, model.variables)
  with pytest.raises(FileNotFoundError, match=r'newest inference checkpoint is .*step_0000020 \(2 in'):
    checkpoint.load(workdir)
  photo = tmp_path / 'photo.png'
  from PIL import Image
  Image.new('RGB', (32, 32)).save(photo)
  assert cli.main(['export', str(workdir), '--source', str(photo), '--out', str(tmp_path / 'e')]) == 2
  err = capsys.readouterr().err
  assert 'step_0000020' in err and 'Traceback' not in err and '--debug' in err
  (tmp_path / 'a_file').write_text('x')
  assert cli.main(['export', str(workdir), '--source', str(photo), '--out', str(tmp_path / 'a_file')]) == 2
  assert 'a_file is a file' in capsys.readouterr().err


def test_sigterm_ends_a_command_through_its_cleanups_with_exit_143(tmp_path):
  marker = tmp_path / 'cleaned'
  code = textwrap.dedent(f'''
      import sys, time
      from bilayer_jax import cli

      def slow(args):
        try:
          print('ready', flush=True)
          time.sleep(120)
        finally:
          open({str(marker)!r}, 'w').write('cleanup ran')

      cli.cmd_info = slow
      sys.argv = ['bilayer-jax', 'info']
      sys.exit(cli.main())
  ''')
  env = {**os.environ, 'BILAYER_MALLOC': 'system', 'JAX_PLATFORMS': 'cpu'}
  process = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
  assert process.stdout.readline().strip() == 'ready'
  time.sleep(0.2)
  process.terminate()
  _, err = process.communicate(timeout=60)
  assert process.returncode == cli.EXIT_TERMINATED == 143
  assert marker.read_text() == 'cleanup ran' and 'stopped by SIGTERM' in err and 'Traceback' not in err


def test_a_workdir_that_is_a_file_is_one_line_before_any_work(tmp_path, capsys):
  taken = tmp_path / 'notes.txt'
  taken.write_text('mine')
  assert cli.main(['train', '--config', 'tiny_cpu:synthetic,micro', '--workdir', str(taken)]) == cli.EXIT_BAD_INPUT
  err = capsys.readouterr().err
  assert 'notes.txt is a file, not a folder' in err and 'Traceback' not in err and taken.read_text() == 'mine'

"""The command line."""
import subprocess
import sys

from bilayer_jax import cli


def test_info_prints_the_paper_counts(capsys):
  assert cli.main(['info', '--config', 'paper']) == 0
  out = capsys.readouterr().out
  for number in ('31,442,304', '32,549,443', '23,115,550', '4,123,782', '7,720,286', '1,463,040',
                 '19,517,633', '2,715,331', '4,312,793,088', '3,944,742,912'):
    assert number in out, number


def test_info_without_harmonics(capsys):
  assert cli.main(['info', '--config', 'paper', '--no-harmonics']) == 0
  assert '1,219,328' in capsys.readouterr().out


def test_console_entry_point_runs():
  result = subprocess.run([sys.executable, '-m', 'bilayer_jax.cli', 'info', '--config', 'tiny'],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert 'inference generator' in result.stdout

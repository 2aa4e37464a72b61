"""benchmarks.gpu, the accelerator script, run at a tiny size on the CPU."""

import os
import subprocess
import sys

import pytest

from benchmarks import gpu

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_mlp_row_and_table():
  row = gpu.measure('mlp', steps=12, long_steps=30, batch=8, repeats=1)
  for key in ('steps_per_second', 'forward_ratio', 'reverse_ratio',
              'plain_compile_s', 'forward_compile_s', 'reverse_compile_s',
              'long_compile_s', 'long_s'):
    assert row[key] > 0, key
  # K = 9 tangents: forward mode costs more than one plain run.
  assert row['forward_ratio'] > 1
  assert row['auto'] in ('Forward', 'Reverse')
  assert 'measured on' in row['auto_reason']
  text = gpu.table([row])
  assert '| mlp | 8 |' in text and 'T = 30' in text


def test_unknown_problem_named():
  with pytest.raises(ValueError, match="'resnet'"):
    gpu.problem('resnet', 8)


@pytest.mark.slow
def test_script_runs_end_to_end(tmp_path):
  out = tmp_path / 'gpu.md'
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.gpu', '--tiny', '--repeats=1',
       f'--out={out}'], cwd=_ROOT, capture_output=True, text=True,
      timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  text = out.read_text()
  assert '| mlp |' in text and '| wrn |' in text

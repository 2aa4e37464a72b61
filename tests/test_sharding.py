"""Data-parallel unrolls on a 4-device CPU mesh equal the single-device ones."""

import os
import subprocess
import sys

import numpy as np
import pytest

from hypergrad.experiments import tasks
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def result():
  return helpers.run_forced_devices_check('tests.sharding_check')


def test_four_devices_seen(result):
  assert result['devices'] == 4


def test_hypergradients_equal_single_device(result):
  np.testing.assert_allclose(result['loss4'], result['loss1'], rtol=1e-5)
  for kind in result['g1']:
    np.testing.assert_allclose(result['g4'][kind], result['g1'][kind],
                               rtol=2e-3, atol=1e-6)


def test_batch_really_split(result):
  assert result['shard_shape'][0] == 32 // 4
  assert result['all_reduce_in_step']


def test_bad_mesh_specs():
  with pytest.raises(ValueError, match="'data=N'"):
    tasks.make_mesh('model=2')
  with pytest.raises(ValueError, match='needs 64 devices'):
    tasks.make_mesh('data=64')
  assert tasks.make_mesh('') is None


def test_launch_mesh_flag_validated(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'launch.fds', '--workdir', str(tmp_path),
       '--config', os.path.join(ROOT, 'launch', 'configs', 'digits_mlp.py'),
       '--config.mesh=data=3'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert 'mesh' in proc.stderr and 'data=3' in proc.stderr
  assert not os.listdir(tmp_path)

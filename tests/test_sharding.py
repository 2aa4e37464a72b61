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


@pytest.mark.parametrize('one, split, mesh', [
    ('one/1', 'tangent=4/1', {'data': 1, 'tangent': 4}),
    ('one/2', 'member=2/2', {'data': 1, 'member': 2})])
def test_launch_split_over_tangents_or_members_equals_one_device(
    result, one, split, mesh):
  (schedule1, losses1, mesh1), (schedule2, losses2, mesh2) = (
      result['launch'][one], result['launch'][split])
  assert mesh1 is None and mesh2 == mesh
  np.testing.assert_allclose(losses2, losses1, rtol=1e-5)
  assert schedule2.keys() == schedule1.keys()
  for kind in schedule1:
    np.testing.assert_allclose(schedule2[kind], schedule1[kind], rtol=1e-6)


def test_bad_mesh_specs():
  with pytest.raises(ValueError, match="'data=N'"):
    tasks.make_mesh('model=2')
  with pytest.raises(ValueError, match="'data=N'"):
    tasks.make_mesh('data=1,data=1')
  with pytest.raises(ValueError, match='needs 64 devices'):
    tasks.make_mesh('data=64')
  with pytest.raises(ValueError, match='data=2 and tangent=2'):
    tasks.make_mesh('data=2,tangent=2')
  assert tasks.make_mesh('') is None
  mesh = tasks.make_mesh('tangent=1')
  assert mesh.axis_names == ('data', 'tangent')
  assert tasks.data_mesh(mesh) is None
  assert tasks.mesh_size(mesh, 'member') == 1


@pytest.mark.parametrize('case, named', [
    ('reverse_tangent', "estimator='reverse'"),
    ('population_members', 'population=3'),
    ('data_and_tangent', 'data=2 and tangent=2'),
])
def test_launch_split_configs_refused_before_compute(result, case, named):
  assert named in result['refused'][case]


def test_launch_mesh_flag_validated(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'launch.fds', '--workdir', str(tmp_path),
       '--config', os.path.join(ROOT, 'launch', 'configs', 'digits_mlp.py'),
       '--config.mesh=data=3'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert 'mesh' in proc.stderr and 'data=3' in proc.stderr
  assert not os.listdir(tmp_path)

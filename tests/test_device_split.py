"""Tangents and population members split over devices equal one device.

Forced CPU devices, float64: the split programs must give the one-device
hypergradients to round-off (the same arithmetic, only placed elsewhere).
"""

import pytest

from tests import helpers


@pytest.fixture(scope='module')
def result():
  return helpers.run_forced_devices_check('tests.device_split_check')


def test_four_devices_and_a_manual_split(result):
  assert result['devices'] == 4
  assert result['manual_computation']


@pytest.mark.parametrize('case', ['fds_k9', 'k2', 'per_leaf'])
def test_tangent_axis_equals_one_device(result, case):
  r = result[case]
  assert r['hypergrads'] <= 1e-12, r
  assert r['loss'] <= 1e-12 and r['final_state'] <= 1e-12, r
  assert r['nonfinite_step'] == -1


def test_divergence_reported_at_the_same_step(result):
  one, split = result['diverging']
  assert one >= 60 and split == one, result['diverging']


def test_meshes_with_auto_axes_too(result):
  assert result['auto_axes'] <= 1e-12


def test_population_members_and_tangents_split(result):
  for key, value in result['population'].items():
    assert value <= 1e-12, (key, value)


def test_bad_meshes_are_named(result):
  assert "S=6 members cannot be split evenly over the 4 devices" in (
      result['uneven_error'])
  assert "tangent_axis='tangent' is not an axis" in result['axis_error']

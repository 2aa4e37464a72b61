"""The FDS job end to end on a shrunk config: outputs, resume, bad flags."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hypergrad._src import search
from launch import train
from launch.configs import digits_mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_config(**kw):
  c = digits_mlp.get_config()
  c.horizon = 40
  c.outer_steps = 3
  c.intervals.lr = 2
  c.init.lr = 0.05
  c.progress_every = 10
  for k, v in kw.items():
    c[k] = v
  return c


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('full'))
  return workdir, train.train_and_evaluate(_tiny_config(), workdir)


def test_outputs_written(uninterrupted):
  workdir, summary = uninterrupted
  for name in ('summary.json', 'metrics.csv', 'schedules.png',
               'validation.png', 'config.json'):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  with open(os.path.join(workdir, 'metrics.csv')) as f:
    assert len(f.readlines()) == 1 + summary['outer_steps']
  assert summary['outer_steps'] == 3
  assert set(summary['learned_schedule']) == {'lr', 'momentum',
                                              'weight_decay'}
  assert len(summary['learned_schedule']['lr']) == 2
  assert 0.0 <= summary['test_accuracy'] <= 1.0
  assert summary['inner_steps'] == 3 * 40 + 40


def test_kill_and_resume_equals_uninterrupted(uninterrupted, tmp_path,
                                              monkeypatch):
  _, full = uninterrupted
  workdir = str(tmp_path)
  real_step = search.step
  calls = {'n': 0}

  def dying_step(*a, **kw):
    calls['n'] += 1
    if calls['n'] == 2:  # killed during outer step 1, after step 0 was saved
      raise KeyboardInterrupt
    return real_step(*a, **kw)

  monkeypatch.setattr(search, 'step', dying_step)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(_tiny_config(), workdir)
  monkeypatch.setattr(search, 'step', real_step)
  with pytest.raises(train.ConfigError, match='--resume'):
    train.train_and_evaluate(_tiny_config(), workdir)
  resumed = train.train_and_evaluate(_tiny_config(), workdir, resume=True)
  assert resumed['learned_schedule'] == full['learned_schedule']
  assert resumed['test_accuracy'] == full['test_accuracy']
  assert resumed['outer_steps'] == full['outer_steps']
  with open(os.path.join(workdir, 'metrics.csv')) as f:
    assert len(f.readlines()) == 1 + 3


def test_resume_with_other_config_refused(uninterrupted):
  workdir, _ = uninterrupted
  with pytest.raises(train.ConfigError, match='another config'):
    train.train_and_evaluate(_tiny_config(horizon=50), workdir, resume=True)


@pytest.mark.parametrize('change, message', [
    ({'task': 'imagenet_vit'}, 'unknown task'),
    ({'horizon': 0}, 'horizon must be a positive integer'),
    ({'hyperparams': 'lr,dropout'}, "unknown hyperparameter 'dropout'"),
    ({'estimator': 'magic'}, "unknown estimator 'magic'"),
])
def test_bad_config_before_compute(change, message, tmp_path):
  with pytest.raises(train.ConfigError, match=message):
    train.train_and_evaluate(_tiny_config(**change), str(tmp_path))
  assert not os.listdir(tmp_path)  # nothing written, nothing computed


def test_intervals_longer_than_horizon():
  c = _tiny_config()
  c.intervals.lr = 41
  with pytest.raises(train.ConfigError, match=r'intervals for lr \(41\)'):
    train.validate_config(c)


@pytest.mark.parametrize('flags, message', [
    (['--task', 'nope'], "unknown --task 'nope'"),
    (['--horizon', '0'], 'horizon must be a positive integer'),
    (['--horizon', '10', '--intervals', 'lr=20'], 'exceed the horizon'),
    (['--hyperparams', 'lr,temperature'], "unknown hyperparameter"),
    (['--intervals', 'lr=x'], 'is not an integer'),
    (['--hyperparams', 'lr', '--intervals', 'momentum=3'],
     'momentum is not learned'),
])
def test_bad_flags_exit_with_message(flags, message, tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'launch.fds', '--workdir', str(tmp_path)] + flags,
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert message in proc.stderr + proc.stdout
  assert not os.listdir(tmp_path)

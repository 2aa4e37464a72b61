"""The FDS job end to end on a shrunk config: outputs, resume, bad flags."""

import csv
import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

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
  assert len(summary['test_accuracies']) == 3  # paired retrains
  assert len(summary['default_test_accuracies']) == 3
  assert summary['inner_steps'] == 3 * 40 + 2 * 3 * 40
  # The strongest reference, chosen on validation, and the gain over it.
  losses = summary['reference_val_losses']
  assert summary['strongest_reference'] == min(losses, key=losses.get)
  assert losses['cosine_grid'] <= losses['default_cosine']
  assert len(summary['reference_test_accuracies']) == 3
  if summary['strongest_reference'] == 'default':
    assert (summary['reference_test_accuracies']
            == summary['default_test_accuracies'])
  assert summary['paired_gain_over_reference'] == pytest.approx(
      summary['test_accuracy'] - summary['reference_test_accuracy'])
  # The reported schedule is one the search evaluated, with its loss.
  with open(os.path.join(workdir, 'metrics.csv')) as f:
    rows = list(csv.DictReader(f))
  step = summary['learned_schedule_outer_step']
  assert json.loads(rows[step]['hparams']) == summary['learned_schedule']
  assert float(rows[step]['val_loss']) == pytest.approx(
      summary['learned_schedule_val_loss'])
  assert min(float(r['val_loss']) for r in rows if r['accepted'] == 'True'
             ) == pytest.approx(summary['learned_schedule_val_loss'])


def test_kill_and_resume_equals_uninterrupted(uninterrupted, tmp_path):
  _, full = uninterrupted
  workdir = str(tmp_path)

  def die(state, record):
    if record['outer_step'] == 0:  # killed after step 0 was saved
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(_tiny_config(), workdir, on_outer_step=die)
  # The folder holds a run: neither silently continued nor overwritten.
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
    ({'val_objective': 'accuracy'}, "unknown val_objective 'accuracy'"),
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


def test_resume_with_other_horizon_refused_by_the_checkpoint_itself(
    uninterrupted, tmp_path):
  # config.json gone: the checkpoint's own record of the config decides.
  workdir = str(tmp_path / 'copy')
  shutil.copytree(uninterrupted[0], workdir)
  os.remove(os.path.join(workdir, 'config.json'))
  with pytest.raises(train.ConfigError, match='another config'):
    train.train_and_evaluate(_tiny_config(horizon=50), workdir, resume=True)


def test_finished_run_without_checkpoints_is_not_overwritten(uninterrupted,
                                                             tmp_path):
  workdir = str(tmp_path / 'copy')
  shutil.copytree(uninterrupted[0], workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints'))
  before = open(os.path.join(workdir, 'metrics.csv')).read()
  with pytest.raises(train.ConfigError, match='already holds a run'):
    train.train_and_evaluate(_tiny_config(), workdir)
  assert open(os.path.join(workdir, 'metrics.csv')).read() == before
  with pytest.raises(train.ConfigError, match='finished run whose checkpoints'):
    train.train_and_evaluate(_tiny_config(), workdir, resume=True)
  assert open(os.path.join(workdir, 'metrics.csv')).read() == before
  # --overwrite starts over: no output of the old run is left beside it.
  os.utime(os.path.join(workdir, 'summary.json'), (0, 0))
  summary = train.train_and_evaluate(_tiny_config(outer_steps=1), workdir,
                                     overwrite=True)
  assert summary['outer_steps'] == 1
  assert os.path.getmtime(os.path.join(workdir, 'summary.json')) > 0


def test_resume_of_a_missing_run_is_an_error(tmp_path):
  with pytest.raises(train.ConfigError, match='no checkpointed run'):
    train.train_and_evaluate(_tiny_config(), str(tmp_path / 'typo'),
                             resume=True)


def test_second_process_on_a_workdir_is_refused(tmp_path):
  from hypergrad.experiments import workdir as workdir_lib
  workdir = str(tmp_path)
  # Another process holds the lock (a child that sleeps holding it).
  holder = subprocess.Popen(
      [sys.executable, '-c',
       'import sys, time; from hypergrad.experiments import workdir as w; '
       'w.WorkdirLock(sys.argv[1]).acquire(); print("held", flush=True); '
       'time.sleep(60)', workdir],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(train.ConfigError,
                       match=f'in use by another run \\(process {holder.pid}'):
      train.train_and_evaluate(_tiny_config(), workdir)
  finally:
    holder.kill()
    holder.wait()
  # Killed, the holder left no stale lock.
  with workdir_lib.WorkdirLock(workdir):
    pass


def test_unwritable_workdir_is_one_line_error(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'launch.fds', '--workdir', '/proc/hypergrad',
       '--config.horizon=20', '--config.outer_steps=1'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert 'error: ' in proc.stderr and '/proc/hypergrad' in proc.stderr
  assert 'Traceback' not in proc.stderr


# -- Bad input: one `error:` line, the last printed, before any compute ------

# A run of `launch.fds` that stops at its first outer step's checkpoint.
TINY = ['--config', 'digits_mlp', '--config.horizon=20',
        '--config.outer_steps=1', '--config.intervals.lr=2',
        '--config.retrain_inits=1']


def _fds(*args, script=None):
  """``python -m launch.fds ARGS`` (or ``python -c SCRIPT ARGS``)."""
  head = ['-c', script] if script else ['-m', 'launch.fds']
  return subprocess.run([sys.executable, *head, *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))


def _error_line(proc) -> str:
  """The job's `error:` line: its last, with no traceback or help before."""
  assert proc.returncode == 1, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert lines and lines[-1].startswith('error: '), proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  # absl's usage text: the module docstring and every flag.
  assert 'hyperparameter optimisation' not in proc.stderr, proc.stderr[:500]
  assert '--workdir: Output folder' not in proc.stderr
  assert [l for l in lines if l.startswith('error')] == lines[-1:], lines
  return lines[-1]


@pytest.mark.parametrize('flag, message', [
    ('--config.nonsense=1',
     'error: --config.nonsense: no such field in config digits_mlp; fields: '
     'aggregate, batch_size,'),
    ('--config.lr_intervals=0',
     'error: --config.lr_intervals: no such field in config digits_mlp; did '
     'you mean --config.intervals.lr?'),
    ('--config.intervals.lrr=3',
     'error: --config.intervals.lrr: no such field in config digits_mlp; did '
     'you mean --config.intervals.lr? fields of intervals: lr, momentum, '
     'weight_decay.'),
    ('--config.nonsense.deeper=1',
     'error: --config.nonsense.deeper: no such field in config digits_mlp;'),
    ('--config.horizon.x=1',
     'error: --config.horizon.x: horizon is a value of config digits_mlp, not '
     'a group of fields.'),
])
def test_unknown_config_field_is_one_error_line(flag, message, tmp_path):
  proc = _fds(*TINY, flag, '--workdir', str(tmp_path / 'run'))
  assert _error_line(proc).startswith(message)
  assert not (tmp_path / 'run').exists()


def test_unknown_field_of_the_default_config_is_named_with_it(tmp_path):
  proc = _fds('--config.lr_intervals=0', '--workdir', str(tmp_path / 'run'))
  assert _error_line(proc).startswith(
      'error: --config.lr_intervals: no such field in config '
      'mnist1d_large_mlp; did you mean --config.intervals.lr?')


@pytest.mark.parametrize('flags, line', [
    (['--config.horizon=0'],
     'error: horizon must be a positive integer, got 0.'),
    (['--config.outer_steps=-1'],
     'error: outer_steps must be a positive integer, got -1.'),
    (['--config.horizon=abc'],
     "error: flag --config.horizon=abc: invalid literal for int() with base "
     "10: 'abc' (--help lists the flags)"),
    (['--config', 'no_such_config'],
     'error: --config no_such_config: No such file or directory, and no task '
     'config of that name'),
    (['--no_such_flag'],
     "error: Unknown command line flag 'no_such_flag' (--help lists the "
     "flags)"),
    (['stray'], "error: unexpected arguments: ['stray']"),
])
def test_bad_config_value_is_one_error_line_without_help(flags, line,
                                                         tmp_path):
  proc = _fds(*TINY, *flags, '--workdir', str(tmp_path / 'run'))
  assert _error_line(proc).startswith(line)
  assert not (tmp_path / 'run').exists()


def test_workdir_that_is_a_file_is_refused(tmp_path):
  file = tmp_path / 'x'
  file.write_text('not a workdir')
  with pytest.raises(train.ConfigError,
                     match=f'--workdir {file} is a file, not a directory'):
    train.train_and_evaluate(_tiny_config(), str(file))
  with pytest.raises(train.ConfigError,
                     match=f'--workdir {file}/run: {file} is a file'):
    train.train_and_evaluate(_tiny_config(), str(file / 'run'))
  assert file.read_text() == 'not a workdir'
  proc = _fds(*TINY, '--workdir', str(file))
  assert _error_line(proc) == (
      f'error: --workdir {file} is a file, not a directory.')


def test_write_error_names_the_path(tmp_path):
  from hypergrad.experiments import workdir as workdir_lib
  path = str(tmp_path / 'summary.json')
  with pytest.raises(OSError) as info:
    with workdir_lib.writing(path):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  assert str(info.value) == f'cannot write {path}: No space left on device'
  assert info.value.errno == errno.ENOSPC
  # An error that names its file already is left as it is.
  error = FileNotFoundError(errno.ENOENT, 'No such file', path)
  with pytest.raises(FileNotFoundError) as info:
    with workdir_lib.writing(str(tmp_path)):
      raise error
  assert info.value is error


# The launch job with its checkpoint seam (launch.workdir.on_checkpoint_write)
# reporting a full disk when checkpoint 1 is created.
_DISK_FULL = r'''
import errno, os
from launch import fds, workdir

def full(phase, path):
  if phase == 'created' and path.endswith(os.sep + '1'):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

workdir.on_checkpoint_write = full
fds.run()
'''


def test_full_disk_names_the_checkpoint_being_written(tmp_path):
  workdir = tmp_path / 'run'
  proc = _fds(*TINY, '--workdir', str(workdir), script=_DISK_FULL)
  assert _error_line(proc) == (
      f'error: cannot write checkpoint {workdir}/checkpoints/1: No space left '
      'on device')
  assert not (workdir / 'summary.json').exists()


def test_collapse_to_chance_reports_the_initial_schedule(tmp_path):
  # A huge learning-rate step: every later schedule trains to chance level
  # or diverges. The result must be the initial schedule, with a warning.
  c = _tiny_config(outer_steps=3, divergence_factor=0.0)
  c.step_sizes.lr = 5.0
  summary = train.train_and_evaluate(c, str(tmp_path))
  assert not summary['improved_on_initial']
  np.testing.assert_allclose(summary['learned_schedule']['lr'], [0.05, 0.05])
  assert summary['rejected_outer_steps'] >= 1
  assert summary['test_accuracy'] > 0.5


# Slow (two population runs, ~40 s on a core): make test skips it, CI runs it.
@pytest.mark.slow
def test_population_with_auto_estimator_equals_forward(tmp_path):
  # The main job's kind of run: a population, median, undecided values
  # left in place, hypergradients by whichever estimator `auto` picks. It
  # must learn what forward mode learns, and record the sign agreement.
  kw = dict(population=3, aggregate='median', min_agreement=0.5,
            outer_steps=2, retrain_inits=1)
  auto = train.train_and_evaluate(_tiny_config(estimator='auto', **kw),
                                  str(tmp_path / 'auto'))
  fwd = train.train_and_evaluate(_tiny_config(estimator='forward', **kw),
                                 str(tmp_path / 'forward'))
  for k in fwd['learned_schedule']:
    np.testing.assert_allclose(auto['learned_schedule'][k],
                               fwd['learned_schedule'][k], rtol=1e-5)
  assert auto['learned_schedule_val_loss'] == pytest.approx(
      fwd['learned_schedule_val_loss'], rel=1e-4)
  assert auto['population'] == 3 and auto['estimator'] == 'auto'
  with open(tmp_path / 'auto' / 'metrics.csv') as f:
    rows = list(csv.DictReader(f))
  agreement = json.loads(rows[0]['sign_agreement'])
  assert set(agreement) == {'lr', 'momentum', 'weight_decay'}
  values = np.concatenate([np.ravel(v) for v in agreement.values()])
  assert np.all((values >= 0) & (values <= 1))
  assert os.path.getsize(tmp_path / 'auto' / 'sign_agreement.png') > 0


def test_population_from_runs_one_inner_run_before_it(tmp_path):
  kw = dict(outer_steps=2, retrain_inits=1)
  late = train.train_and_evaluate(
      _tiny_config(population=3, population_from=1, aggregate='median',
                   **kw), str(tmp_path / 'late'))
  train.train_and_evaluate(_tiny_config(**kw), str(tmp_path / 'single'))
  assert late['population_from'] == 1
  rows = {}
  for name in ('late', 'single'):
    with open(tmp_path / name / 'metrics.csv') as f:
      rows[name] = list(csv.DictReader(f))
  # Outer step 0 is the single run itself (member 0 has its seed) ...
  assert json.loads(rows['late'][0]['sign_agreement']) is None
  assert float(rows['late'][0]['val_loss']) == pytest.approx(
      float(rows['single'][0]['val_loss']), rel=1e-6)
  assert rows['late'][0]['hypergrads'] == rows['single'][0]['hypergrads']
  # ... and outer step 1 the population.
  assert json.loads(rows['late'][1]['sign_agreement']) is not None


def test_negative_population_from_refused(tmp_path):
  with pytest.raises(train.ConfigError, match='population_from'):
    train.train_and_evaluate(_tiny_config(population_from=-1), str(tmp_path))

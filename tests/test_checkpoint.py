"""Checkpoints of the outer loop: SIGKILL, kills mid-write, corruption, no pickle.

The kill tests run the real launch script (``python -m launch.fds``) in a
subprocess and compare the resumed run's ``summary.json`` with an
uninterrupted run's, field by field. The subprocesses share a persistent JAX
compilation cache (a temporary folder) so that each one compiles little.

Corruption tests work on :class:`ckpt_lib.OuterCheckpointer` directly (fast)
and once through ``launch.fds --resume``.
"""

import errno
import glob
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hypergrad
from hypergrad.experiments import checkpoint as ckpt_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TMP_SUFFIX = '.orbax-checkpoint-tmp'
# Four outer steps of a tiny FDS run; a checkpoint after each one.
FDS_FLAGS = ['--config', os.path.join(ROOT, 'launch', 'configs',
                                      'digits_mlp.py'),
             '--config.horizon=40', '--config.outer_steps=4',
             '--config.intervals.lr=2']
# Fields of summary.json that a resumed run must reproduce exactly.
SAME = ('learned_schedule', 'test_accuracy', 'test_loss', 'outer_steps',
        'converged', 'rejected_outer_steps', 'inner_steps',
        'default_test_accuracy')
TIMEOUT = 420  # seconds per subprocess; generous for a loaded 2-core machine


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """Subprocess environment with a shared persistent compilation cache."""
  cache = str(tmp_path_factory.mktemp('jax_cache'))
  return dict(os.environ, JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=cache,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
              PYTHONPATH=ROOT)


def _fds(env, workdir, *extra, prefix=('-m', 'launch.fds')):
  return subprocess.run(
      [sys.executable, *prefix, *FDS_FLAGS, '--workdir', str(workdir), *extra],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def _summary(workdir):
  with open(os.path.join(workdir, 'summary.json')) as f:
    return json.load(f)


def _steps(workdir):
  """Finalised checkpoint steps in ``workdir/checkpoints``."""
  try:
    names = os.listdir(os.path.join(workdir, 'checkpoints'))
  except FileNotFoundError:
    return []
  return sorted(int(n) for n in names if n.isdigit())


def _assert_same_result(resumed, reference):
  for key in SAME:
    assert resumed[key] == reference[key], key


def _assert_resumed(proc, from_step):
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'resumed from outer step {from_step}' in proc.stderr, proc.stderr
  # The steps before the checkpoint were not run again.
  for k in range(from_step):
    assert f'outer step {k} accepted' not in proc.stderr


@pytest.fixture(scope='module')
def reference(env, tmp_path_factory):
  """An uninterrupted run of the same command: (workdir, summary)."""
  workdir = tmp_path_factory.mktemp('reference')
  proc = _fds(env, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = _summary(workdir)
  assert summary['outer_steps'] == 4
  return workdir, summary


def test_sigkill_mid_run_resumes_to_the_uninterrupted_result(env, reference,
                                                             tmp_path):
  workdir = tmp_path / 'run'
  cmd = [sys.executable, '-m', 'launch.fds', *FDS_FLAGS, '--workdir',
         str(workdir)]
  with open(tmp_path / 'killed.log', 'w') as log:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
      deadline = time.monotonic() + TIMEOUT
      while not _steps(workdir) and proc.poll() is None:
        assert time.monotonic() < deadline, 'no checkpoint was written'
        time.sleep(0.005)
      assert proc.poll() is None, 'the run ended before it could be killed'
      os.kill(proc.pid, signal.SIGKILL)
      assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  steps = _steps(workdir)
  assert steps and steps[-1] >= 1
  assert not os.path.exists(workdir / 'summary.json')

  resumed = _fds(env, workdir, '--resume')
  # The latest step at the kill, or one written during the kill's delivery.
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resumed from outer step' in resumed.stderr
  assert 'outer step 0 accepted' not in resumed.stderr
  _assert_same_result(_summary(workdir), reference[1])
  with open(workdir / 'metrics.csv') as f:
    assert len(f.readlines()) == 1 + 4
  assert not glob.glob(str(workdir / 'checkpoints' / f'*{TMP_SUFFIX}*'))


# Killed (SIGKILL) while writing checkpoint 2, at three moments: right after
# its temporary folder was made; with the array item written but not yet
# committed; with every item written and in place, just before the step is
# committed and renamed (the first two are marked slow). The child is
# `launch.fds` itself with the launch's fault-injection seam set
# (launch.workdir.on_checkpoint_write, reported by OuterCheckpointer's
# on_write; no orbax internals patched); if the seam stops reporting, the
# run is not killed and the test fails.
_DIE_WHILE_SAVING = r'''
import os, signal, sys
from absl import app
from launch import fds, workdir
phase, where = sys.argv.pop(1).split(':')

def die(event, path):
  if event == phase and path.endswith(os.sep + where):
    sys.stdout.flush(); sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

workdir.on_checkpoint_write = die
app.run(fds.main)
'''
# moment: (phase, the end of the path it reports).
MOMENTS = {'created': ('created', '2'),
           'items': ('finalizing', f'2{TMP_SUFFIX}/state'),
           'renaming': ('finalizing', '2')}


@pytest.mark.parametrize('moment', [
    pytest.param('created', marks=pytest.mark.slow),
    pytest.param('items', marks=pytest.mark.slow),
    'renaming',  # the last moment: every item written, none published
])
def test_sigkill_during_checkpoint_write_resumes_from_previous(
    env, reference, tmp_path, moment):
  workdir = tmp_path / 'run'
  killed = _fds(env, workdir, prefix=('-c', _DIE_WHILE_SAVING,
                                      ':'.join(MOMENTS[moment])))
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  ckpts = workdir / 'checkpoints'
  # What orbax leaves behind: the previous step whole, the new one only as
  # its temporary folder.
  assert _steps(workdir) == [1]
  assert os.path.isdir(ckpts / f'2{TMP_SUFFIX}')
  assert not os.path.exists(ckpts / '2')
  restored = ckpt_lib.OuterCheckpointer(str(ckpts)).restore_latest(
      _template())
  assert restored[0].step == 1 and len(restored[1]) == 1

  resumed = _fds(env, workdir, '--resume')
  _assert_resumed(resumed, from_step=1)
  _assert_same_result(_summary(workdir), reference[1])
  assert _steps(workdir) == [3, 4]
  assert not glob.glob(str(ckpts / f'*{TMP_SUFFIX}*'))  # the stale one too


def test_corrupted_checkpoint_refused_by_launch_script(env, reference,
                                                       tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(reference[0], workdir)
  latest = workdir / 'checkpoints' / '4'
  data = [p for p in glob.glob(str(latest / 'state' / 'd' / '*'))]
  assert data
  for path in data:
    _truncate(path)
  before = {n: (workdir / n).read_bytes() for n in ('summary.json',
                                                     'metrics.csv')}
  proc = _fds(env, workdir, '--resume')
  assert proc.returncode == 1
  assert f'checkpoint {latest} cannot be restored whole' in proc.stderr
  # The refusal is the last line: no orbax read left in flight calls back
  # into a closed event loop after it (RuntimeError: Event loop is closed).
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: checkpoint {latest} cannot be restored'), (
      proc.stderr[-3000:])
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert 'Event loop is closed' not in proc.stderr
  assert 'Delete that folder to resume from the previous checkpoint' in (
      proc.stderr)
  assert 'resumed from' not in proc.stderr
  assert not re.search(r'outer step \d+ (accepted|REJECTED)', proc.stderr)
  for name, content in before.items():  # nothing continued, nothing rewritten
    assert (workdir / name).read_bytes() == content, name


# -- OuterCheckpointer directly -------------------------------------------------


def _template():
  """The outer state of the FDS_FLAGS run (for shapes and dtypes)."""
  hparams = {'lr': hypergrad.constant(0.0, 2, jnp.float32),
             'momentum': hypergrad.constant(0.0, 1, jnp.float32),
             'weight_decay': hypergrad.constant(0.0, 1, jnp.float32)}
  return hypergrad.outer_init(hparams, hypergrad.sign_descent(
      {'lr': 0.1, 'momentum': 0.1, 'weight_decay': 3e-4}))


def _state(step):
  t = _template()
  hparams = jax.tree.map(lambda h: h + 0.1 * step, t.hparams)
  return t._replace(hparams=hparams, step=step, initial_loss=2.5 + step)


def _records(n):
  return [{'outer_step': i, 'val_loss': 1.0 / (i + 1), 'accepted': True,
           'hypergrad_norm': float('nan') if i == 1 else 0.5,
           'hparams': {'lr': [0.1 * i, 0.2]}, 'wall_time': 1.5 * i}
          for i in range(n)]


def _tree_equal(a, b):
  return jax.tree.all(jax.tree.map(
      lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)),
      ckpt_lib._to_tree(a), ckpt_lib._to_tree(b)))


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """Checkpoints 2 and 3 (1 was rotated out), written by OuterCheckpointer."""
  directory = str(tmp_path_factory.mktemp('saved') / 'checkpoints')
  ckpt = ckpt_lib.OuterCheckpointer(directory)
  for step in (1, 2, 3):
    ckpt.save(_state(step), _records(step))
  ckpt.close()
  assert sorted(os.listdir(directory)) == ['2', '3']
  return directory


@pytest.fixture
def copy(saved, tmp_path):
  directory = tmp_path / 'checkpoints'
  shutil.copytree(saved, directory)
  return directory


def test_round_trip(copy):
  state, records = ckpt_lib.OuterCheckpointer(str(copy)).restore_latest(
      _template())
  assert _tree_equal(state, _state(3))
  assert (json.dumps(records, sort_keys=True)  # NaN included
          == json.dumps(_records(3), sort_keys=True))


def test_on_write_reports_each_phase_of_a_write(tmp_path):
  # The seam the kill tests above stop a run at: every phase is reported
  # while the step is only a temporary folder, in the order it happens.
  directory = tmp_path / 'checkpoints'
  seen = []

  def on_write(phase, path):
    seen.append((phase, os.path.relpath(path, directory)))
    assert sorted(os.listdir(directory)) == [f'1{TMP_SUFFIX}']

  ckpt = ckpt_lib.OuterCheckpointer(str(directory), on_write=on_write)
  ckpt.save(_state(1), _records(1))
  ckpt.close()
  items = [f'1{TMP_SUFFIX}/{item}' for item in ('records', 'state')]
  assert seen[0] == ('created', '1') and seen[-1] == ('finalizing', '1')
  assert sorted(seen[1:-1]) == [(phase, item) for phase in ('created',
                                                            'finalizing')
                                for item in items]
  for item in items:
    assert seen.index(('created', item)) < seen.index(('finalizing', item))
  assert os.listdir(directory) == ['1']
  state, records = ckpt_lib.OuterCheckpointer(str(directory)).restore_latest(
      _template())
  assert _tree_equal(state, _state(1)) and records == _records(1)


def _truncate(path, keep=0.5):
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.truncate(int(size * keep))


def _flip(path, where=0.5):
  with open(path, 'r+b') as f:
    data = bytearray(f.read())
    i = min(int(len(data) * where), len(data) - 1)
    data[i] ^= 0x01
    f.seek(0)
    f.write(data)


def _flip_digit(path):
  """A bit flip that keeps the JSON valid: '0.5' -> '0.4' and the like."""
  with open(path, 'rb') as f:
    text = f.read().decode()
  i = text.index('"val_loss": ') + len('"val_loss": ')
  assert text[i].isdigit()
  with open(path, 'w') as f:
    f.write(text[:i] + chr(ord(text[i]) ^ 0x01) + text[i + 1:])


def _glob1(pattern):
  paths = glob.glob(pattern)
  assert paths, pattern
  return paths


def _rewrite_records(path):
  """Valid JSON and a matching digest, but one record too few."""
  with open(path) as f:
    item = json.load(f)
  item['records'] = item['records'][:-1]
  item['sha256'] = ckpt_lib._digest(item['records'])
  with open(path, 'w') as f:
    json.dump(item, f)


CORRUPTIONS = {
    'array data truncated': lambda d: [_truncate(p) for p in _glob1(
        f'{d}/state/d/*')],
    'array data emptied': lambda d: [_truncate(p, 0) for p in _glob1(
        f'{d}/state/d/*')],
    'array data bit flip': lambda d: [_flip(p) for p in _glob1(
        f'{d}/state/d/*')],
    'array data deleted': lambda d: [os.remove(p) for p in _glob1(
        f'{d}/state/d/*')],
    'array manifest truncated': lambda d: _truncate(f'{d}/state/manifest.ocdbt'),
    'array manifest deleted': lambda d: os.remove(f'{d}/state/manifest.ocdbt'),
    'array metadata truncated': lambda d: _truncate(f'{d}/state/_METADATA'),
    'array metadata deleted': lambda d: os.remove(f'{d}/state/_METADATA'),
    'state item deleted': lambda d: shutil.rmtree(f'{d}/state'),
    'records truncated': lambda d: _truncate(f'{d}/records/metadata'),
    'records bit flip': lambda d: _flip(f'{d}/records/metadata', 0.3),
    'records digit flipped': lambda d: _flip_digit(f'{d}/records/metadata'),
    'records deleted': lambda d: os.remove(f'{d}/records/metadata'),
    'records item deleted': lambda d: shutil.rmtree(f'{d}/records'),
    'records inconsistent': lambda d: _rewrite_records(
        f'{d}/records/metadata'),
}


@pytest.mark.parametrize('corruption', sorted(CORRUPTIONS))
def test_corrupted_latest_checkpoint_refused(copy, corruption, monkeypatch):
  latest = copy / '3'
  CORRUPTIONS[corruption](str(latest))
  ckpt = ckpt_lib.OuterCheckpointer(str(copy))
  unraisable = []
  monkeypatch.setattr(sys, 'unraisablehook',
                      lambda u: unraisable.append(repr(u.exc_value)))
  with pytest.raises(ckpt_lib.CheckpointError) as info:
    ckpt.restore_latest(_template())
  ckpt.close()
  # Reads orbax left in flight would call back into its closed event loop
  # now, from tensorstore's threads, each a RuntimeError printed at random.
  time.sleep(0.1)
  assert not unraisable, unraisable[:3]
  message = str(info.value)
  assert str(latest) in message  # names the folder
  assert ('Delete that folder to resume from the previous checkpoint, or '
          'start afresh in a new --workdir.') in message  # says what to do
  assert len(message) < 1000  # not a wall of tensorstore specs
  # Following the advice resumes from the previous, intact checkpoint.
  shutil.rmtree(latest)
  state, records = ckpt_lib.OuterCheckpointer(str(copy)).restore_latest(
      _template())
  assert state.step == 2 and _tree_equal(state, _state(2))
  assert len(records) == 2


def test_full_disk_names_the_checkpoint_folder(tmp_path):
  directory = tmp_path / 'checkpoints'

  def full(phase, path):
    if phase == 'created' and path == str(directory / '2'):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  ckpt = ckpt_lib.OuterCheckpointer(str(directory), on_write=full)
  ckpt.save(_state(1), _records(1))
  with pytest.raises(OSError) as info:
    ckpt.save(_state(2), _records(2))
  ckpt.close()
  assert info.value.errno == errno.ENOSPC
  assert str(info.value) == (f'cannot write checkpoint {directory / "2"}: No '
                             'space left on device')
  # The checkpoint before it is whole, and restored.
  state, records = ckpt_lib.OuterCheckpointer(str(directory)).restore_latest(
      _template())
  assert state.step == 1 and len(records) == 1


def test_restore_of_another_structure_refused(copy):
  other = hypergrad.outer_init(
      {'lr': hypergrad.constant(0.0, 5, jnp.float32)},
      hypergrad.sign_descent({'lr': 0.1}))
  with pytest.raises(ckpt_lib.CheckpointError, match='cannot be restored'):
    ckpt_lib.OuterCheckpointer(str(copy)).restore_latest(other)


def test_no_checkpoint_restores_none(tmp_path):
  ckpt = ckpt_lib.OuterCheckpointer(str(tmp_path / 'checkpoints'))
  assert ckpt.restore_latest(_template()) is None


def test_nothing_is_unpickled(copy, monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError('a checkpoint was unpickled')
  monkeypatch.setattr(pickle, 'load', refuse)
  monkeypatch.setattr(pickle, 'loads', refuse)
  monkeypatch.setattr(pickle, 'Unpickler', refuse)
  state, records = ckpt_lib.OuterCheckpointer(str(copy)).restore_latest(
      _template())
  assert _tree_equal(state, _state(3)) and len(records) == 3


def test_nothing_is_pickled(copy):
  with open(copy / '3' / '_CHECKPOINT_METADATA') as f:
    handlers = json.load(f)['item_handlers']
  assert set(handlers) == {'state', 'records'}
  assert handlers['state'].endswith('StandardCheckpointHandler')
  assert handlers['records'].endswith('JsonCheckpointHandler')
  for path in glob.glob(f'{copy}/**', recursive=True):
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        head = f.read(2)
      # Pickle protocols 2-5 start with PROTO (0x80) and the protocol number.
      assert not (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5), (
          path)

"""SIGKILL at random moments, 20+ times over one short run: nothing is lost.

A tiny FDS run is killed again and again, at random moments (during start-up,
compilation, an outer step, a checkpoint write) and once deterministically
between the metrics/TensorBoard write of an outer step and its checkpoint;
each time it is resumed with ``--resume``. The final result must be identical
to an uninterrupted run, ``metrics.csv`` must hold each outer step once, and
TensorBoard, read as TensorBoard reads it (a ``purge_step`` session start
drops the points at and after it), must hold each point once.
"""

import glob
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time

import pytest
from tensorboardX.proto import event_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTER_STEPS = 6
FLAGS = ['--config', os.path.join(ROOT, 'launch', 'configs', 'digits_mlp.py'),
         '--config.horizon=40', f'--config.outer_steps={OUTER_STEPS}',
         '--config.intervals.lr=2', '--config.retrain_inits=1']
KILLS = 20
SAME = ('learned_schedule', 'last_schedule', 'test_accuracy', 'outer_steps',
        'converged', 'rejected_outer_steps', 'default_test_accuracy',
        'learned_schedule_outer_step')
# Run the launch script, SIGKILLing itself right after the metrics of outer
# step K are written and before their checkpoint (K from the environment).
KILL_AFTER_METRICS = '''
import os, signal, sys
from hypergrad.experiments import metrics
write = metrics.MetricsWriter.write
def write_then_die(self, record):
  write(self, record)
  if record['outer_step'] == int(os.environ['KILL_AFTER_STEP']):
    os.kill(os.getpid(), signal.SIGKILL)
metrics.MetricsWriter.write = write_then_die
sys.argv = ['fds'] + sys.argv[1:]
from launch import fds
fds.run()
'''


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp('jax_cache'))
  return dict(os.environ, JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=cache,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0', PYTHONPATH=ROOT)


def _cmd(workdir, *extra, script=None):
  head = ['-c', script] if script else ['-m', 'launch.fds']
  return [sys.executable, *head, *FLAGS, '--workdir', str(workdir), *extra]


def _summary(workdir):
  with open(os.path.join(workdir, 'summary.json')) as f:
    return json.load(f)


def _tensorboard_points(workdir):
  """``{(tag, step): count}`` as TensorBoard shows it (purges applied)."""
  points = []
  for path in sorted(glob.glob(os.path.join(workdir, 'tensorboard', '*'))):
    with open(path, 'rb') as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      record = data[pos + 12:pos + 12 + length]
      pos += 12 + length + 4
      event = event_pb2.Event.FromString(record)
      if event.HasField('session_log') and (
          event.session_log.status == event_pb2.SessionLog.START):
        points = [p for p in points if p[1] < event.step]
      for value in event.summary.value:
        points.append((value.tag, event.step))
  counts = {}
  for p in points:
    counts[p] = counts.get(p, 0) + 1
  return counts


@pytest.fixture(scope='module')
def reference(env, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('reference')
  proc = subprocess.run(_cmd(workdir), cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  start = time.monotonic()
  subprocess.run(_cmd(tmp_path_factory.mktemp('timing')), cwd=ROOT, env=env,
                 capture_output=True, timeout=600, check=True)
  return workdir, _summary(workdir), time.monotonic() - start


def _check_same(workdir, ref_dir, ref):
  result = _summary(workdir)
  for key in SAME:
    assert result[key] == ref[key], key
  with open(workdir / 'metrics.csv') as f:
    rows = f.read().splitlines()[1:]
  assert [int(r.split(',')[0]) for r in rows] == list(range(OUTER_STEPS))
  counts = _tensorboard_points(workdir)
  assert counts == _tensorboard_points(ref_dir)
  assert set(counts.values()) == {1}


@pytest.mark.slow  # ~5 min of one core; CI runs it (.ci/run, step 5)
def test_twenty_random_kills_resume_to_the_uninterrupted_result(
    env, reference, tmp_path):
  ref_dir, ref, run_seconds = reference
  rng = random.Random(0)
  kills = resumes = runs = 0
  while kills < KILLS:
    # One run, killed at random moments until it completes; then another,
    # until 20 kills in all. The first is also killed between the
    # TensorBoard flush and the checkpoint of outer step 2.
    workdir = tmp_path / f'run{runs}'
    runs += 1
    if runs == 1:
      proc = subprocess.run(
          _cmd(workdir, script=KILL_AFTER_METRICS), cwd=ROOT,
          env=dict(env, KILL_AFTER_STEP='2'), capture_output=True,
          timeout=600)
      assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
      kills += 1
    while True:
      started = os.path.exists(workdir / 'config.json')
      proc = subprocess.Popen(_cmd(workdir, *(['--resume'] if started else [])),
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
      resumes += started
      try:
        # After the 20th kill the run is left to finish.
        proc.wait(timeout=rng.uniform(0.3, run_seconds)
                  if kills < KILLS else 600)
      except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        kills += 1
      stderr = proc.communicate(timeout=600)[1].decode()
      if proc.returncode == 0:
        break
      assert proc.returncode == -signal.SIGKILL, stderr[-3000:]
    _check_same(workdir, ref_dir, ref)
  print(f'\n{kills} kills over {runs} runs, {resumes} resumes: every result '
        'identical to the uninterrupted run')

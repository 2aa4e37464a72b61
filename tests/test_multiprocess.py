"""Several processes, one FDS run, on one machine through ``jax.distributed``.

Every test starts ``python -m launch.fds`` in 2 (or 4) processes on
127.0.0.1, each with one or more forced CPU devices and gloo collectives, and
compares the learned schedule with a single process's run on a mesh of the
same global size (float32 round-off). They also check who writes what, the
workdir lock across processes, and that a killed or hung process stops the
others within the heartbeat timeout, after which --resume continues the run.
"""

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from hypergrad.experiments import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny FDS run: two outer steps of 20 inner steps, one retrain.
FLAGS = ['--config', os.path.join(ROOT, 'launch', 'configs', 'digits_mlp.py'),
         '--config.horizon=20', '--config.outer_steps=2',
         '--config.intervals.lr=2', '--config.retrain_inits=1']
HEARTBEAT = 10  # seconds: a lost process fails the others about this fast
TIMEOUT = 420  # seconds per run; generous for a loaded 2-core machine


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  """A persistent compilation cache: a resumed run compiles little."""
  return str(tmp_path_factory.mktemp('jax_cache'))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices: int, cache: str) -> dict:
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
              JAX_COMPILATION_CACHE_DIR=cache,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')


class Run:
  """Processes of one launch, their output in files (no pipe to fill)."""

  def __init__(self, logs, name, workdirs, processes, devices, cache,
               *extra):
    self.procs, self.logs = [], []
    port = _free_port()
    mesh = f'--config.mesh=data={processes * devices}'
    for i, workdir in enumerate(workdirs):
      log = os.path.join(logs, f'{name}-{i}.log')
      dist = ([] if processes == 1 else
              ['--coordinator_address', f'127.0.0.1:{port}',
               '--num_processes', str(processes), '--process_id', str(i),
               '--heartbeat_timeout', str(HEARTBEAT)])
      with open(log, 'w') as f:
        self.procs.append(subprocess.Popen(
            [sys.executable, '-m', 'launch.fds', *FLAGS, mesh, '--workdir',
             str(workdir), *dist, *extra], cwd=ROOT,
            env=_env(devices, cache), stdout=f, stderr=subprocess.STDOUT))
      # A process JAX aborts (a lost peer) would otherwise dump core in ROOT.
      resource.prlimit(self.procs[-1].pid, resource.RLIMIT_CORE, (0, 0))
      self.logs.append(log)

  def wait(self, timeout=TIMEOUT):
    """Exit statuses and outputs; kills what is left after ``timeout``."""
    deadline = time.monotonic() + timeout
    codes = []
    for p in self.procs:
      try:
        codes.append(p.wait(max(deadline - time.monotonic(), 0.1)))
      except subprocess.TimeoutExpired:
        self.kill()
        codes.append(p.wait())
    return codes, [self.output(i) for i in range(len(self.procs))]

  def output(self, i):
    with open(self.logs[i]) as f:
      return f.read()

  def kill(self):
    for p in self.procs:
      if p.poll() is None:
        p.kill()


def _summary(workdir):
  with open(os.path.join(workdir, 'summary.json')) as f:
    return json.load(f)


def _assert_same_schedules(got, want):
  for field in ('learned_schedule', 'last_schedule'):
    assert set(got[field]) == set(want[field])
    for kind in want[field]:
      np.testing.assert_allclose(got[field][kind], want[field][kind],
                                 rtol=1e-5, err_msg=f'{field}[{kind}]')
  assert got['outer_steps'] == want['outer_steps']
  assert got['learned_schedule_outer_step'] == want[
      'learned_schedule_outer_step']
  assert got['learned_schedule_val_loss'] == pytest.approx(
      want['learned_schedule_val_loss'], rel=1e-4)
  assert got['test_accuracy'] == pytest.approx(want['test_accuracy'],
                                               abs=2e-3)


def _check_outputs(workdir, outputs, processes, launches=1):
  """Process 0 wrote every file once; the others agree on the schedule."""
  summary = _summary(workdir)
  with open(os.path.join(workdir, 'metrics.csv')) as f:
    assert len(f.readlines()) == 1 + summary['outer_steps']
  # One event file per launch of process 0 (a resume adds one).
  assert len(os.listdir(os.path.join(workdir, 'tensorboard'))) == launches
  assert 'FDS on digits_mlp' in outputs[0]
  for i in range(1, processes):
    line = next(l for l in outputs[i].splitlines()
                if l.startswith(f'process {i}/{processes}: done'))
    schedule = json.loads(line.split('learned schedule ')[1].split('; ')[0])
    assert schedule == summary['learned_schedule']
    assert 'FDS on digits_mlp' not in outputs[i]


def test_two_processes_equal_one(tmp_path, cache):
  one, two = tmp_path / 'one', tmp_path / 'two'
  # Both at once: the reference mostly runs while the pair waits on gloo.
  ref = Run(tmp_path, 'one', [one], 1, 2, cache)
  pair = Run(tmp_path, 'two', [two] * 2, 2, 1, cache)
  codes, outputs = pair.wait()
  assert codes == [0, 0], outputs
  ref_codes, ref_outputs = ref.wait()
  assert ref_codes == [0], ref_outputs
  _check_outputs(two, outputs, 2)
  _assert_same_schedules(_summary(two), _summary(one))


def test_second_set_of_processes_refused(tmp_path, cache):
  busy, other = tmp_path / 'busy', tmp_path / 'other'
  with workdir_lib.WorkdirLock(str(busy)):  # as if another run held it
    refused = Run(tmp_path, 'busy', [busy] * 2, 2, 1, cache)
    # Process 1 given another workdir than process 0's.
    strayed = Run(tmp_path, 'strayed', [tmp_path / 'mine', other], 2, 1,
                  cache)
    codes, outputs = refused.wait(timeout=180)
  assert codes == [1, 1], outputs
  assert 'process 0/2: error:' in outputs[0]
  assert 'is in use by another run' in outputs[0]
  assert 'process 1/2: error: process 0: workdir' in outputs[1]
  codes, outputs = strayed.wait(timeout=180)
  assert codes == [1, 1], outputs
  for out in outputs:
    assert 'process 1/2 does not see the lock of process 0' in out
  assert not os.path.exists(tmp_path / 'mine' / 'config.json')
  assert not os.path.exists(other)


def _wait_for(path, procs, timeout=TIMEOUT):
  deadline = time.monotonic() + timeout
  while not os.path.exists(path):
    assert time.monotonic() < deadline, f'no {path} after {timeout} s'
    assert all(p.poll() is None for p in procs), 'a process ended early'
    time.sleep(0.1)


def _kill_second(run, after, sig=signal.SIGKILL):
  """Signals process 1 once ``after`` exists; checks process 0 stops soon."""
  try:
    _wait_for(after, run.procs)
    run.procs[1].send_signal(sig)
    killed = time.monotonic()
    code = run.procs[0].wait(timeout=HEARTBEAT + 60)
    lost = time.monotonic() - killed
  finally:
    run.kill()
  out = run.output(0)
  print(f'process 0 exited {code} {lost:.1f} s after process 1 got '
        f'{signal.Signals(sig).name}')
  assert code != 0, out
  assert lost < HEARTBEAT + 30, (lost, out)
  # Ours where process 0 waited on process 1 in a collective; JAX's where
  # the coordination service missed process 1's heartbeats.
  assert ('lost contact with another process' in out
          or 'another task died' in out), out
  return out


# A process killed, and one that hangs (stopped: no heartbeat, no reply;
# slow: the others wait out the heartbeat timeout).
@pytest.mark.parametrize('sig', [
    signal.SIGKILL, pytest.param(signal.SIGSTOP, marks=pytest.mark.slow)],
                         ids=['killed', 'hung'])
def test_lost_process_stops_the_other(tmp_path, cache, sig):
  two = tmp_path / 'two'
  pair = Run(tmp_path, 'two', [two] * 2, 2, 1, cache)
  # Both processes joined the run; process 0 compiles the first step.
  _kill_second(pair, two / 'config.json', sig)
  assert not os.path.exists(two / 'summary.json')
  workdir_lib.WorkdirLock(str(two)).acquire().release()  # not left locked


@pytest.mark.slow
def test_four_processes_equal_one(tmp_path, cache):
  one, four = tmp_path / 'one', tmp_path / 'four'
  ref = Run(tmp_path, 'one', [one], 1, 4, cache)
  quad = Run(tmp_path, 'four', [four] * 4, 4, 1, cache)
  codes, outputs = quad.wait()
  assert codes == [0] * 4, outputs
  ref_codes, ref_outputs = ref.wait()
  assert ref_codes == [0], ref_outputs
  _check_outputs(four, outputs, 4)
  _assert_same_schedules(_summary(four), _summary(one))


@pytest.mark.slow
def test_kill_one_process_then_resume(tmp_path, cache):
  one, two = tmp_path / 'one', tmp_path / 'two'
  ref = Run(tmp_path, 'one', [one], 1, 4, cache)
  pair = Run(tmp_path, 'two', [two] * 2, 2, 2, cache)
  # Killed after the first outer step was saved, before the end.
  _kill_second(pair, two / 'checkpoints' / '1')
  assert not os.path.exists(two / 'summary.json')
  resumed = Run(tmp_path, 'resumed', [two] * 2, 2, 2, cache, '--resume')
  codes, outputs = resumed.wait()
  assert codes == [0, 0], outputs
  assert 'resumed from outer step' in outputs[0]
  ref_codes, ref_outputs = ref.wait()
  assert ref_codes == [0], ref_outputs
  _check_outputs(two, outputs, 2, launches=2)
  _assert_same_schedules(_summary(two), _summary(one))

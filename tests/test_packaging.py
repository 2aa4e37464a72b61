"""The core stays light, missing extras are named, and the README example runs."""

import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT_KIT = ('flax', 'tensorflow_datasets', 'optuna', 'sklearn',
                  'matplotlib', 'orbax', 'mnist1d', 'ml_collections',
                  'tensorboardX', 'tqdm')


def _python(code: str, **kw) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'), **kw)


def test_import_hypergrad_loads_the_core_only():
  proc = _python(
      'import sys, time\n'
      't = time.perf_counter()\n'
      'import hypergrad\n'
      'print(time.perf_counter() - t)\n'
      f'print([m for m in {EXPERIMENT_KIT!r} if m in sys.modules])\n'
      'print(len(sys.modules))')
  assert proc.returncode == 0, proc.stderr
  seconds, loaded, count = proc.stdout.split('\n')[:3]
  assert loaded == '[]', loaded
  print(f'import hypergrad: {float(seconds):.2f} s, {count} modules')


@pytest.mark.parametrize('module, extra, code', [
    ('optuna', 'baselines',
     'from hypergrad.experiments import blackbox\n'
     'blackbox.blackbox_search(None, None, None, 10, budget=10)'),
    ('flax', 'experiments', 'import hypergrad.experiments'),
    ('orbax', 'launch', 'import hypergrad.experiments.checkpoint'),
])
def test_a_missing_extra_names_the_pip_install(module, extra, code):
  proc = _python(f'import sys\nsys.modules[{module!r}] = None\n'
                 'import hypergrad\n' + code)
  assert proc.returncode != 0
  assert f"pip install 'jax-hypergrad[{extra}]'" in proc.stderr, proc.stderr


def test_launch_without_its_extra_is_one_line_not_a_traceback():
  proc = _python('import sys\nsys.modules["ml_collections"] = None\n'
                 'import runpy\nrunpy.run_module("launch.fds", '
                 'run_name="__main__")')
  assert proc.returncode == 1
  assert "pip install 'jax-hypergrad[launch]'" in proc.stderr, proc.stderr
  assert 'Traceback' not in proc.stderr, proc.stderr


def _readme_example() -> str:
  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  blocks = re.findall(r'```python\n(.*?)```', text, re.S)
  assert blocks, 'README has no python example'
  return blocks[0]


def test_readme_example_runs_as_printed():
  code = _readme_example()
  assert len([l for l in code.splitlines() if l.strip()]) <= 25
  start = time.monotonic()
  proc = _python(code)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'hypergradient' in proc.stdout.lower(), proc.stdout
  assert time.monotonic() - start < 120


def test_api_reference_lists_every_public_name():
  import hypergrad  # pylint: disable=g-import-not-at-top
  with open(os.path.join(ROOT, 'docs', 'api.md')) as f:
    text = f.read()
  documented = set(re.findall(r'\.\. (?:autoclass|autofunction|py:data):: '
                              r'(\w+)', text))
  missing = [n for n in hypergrad.__all__
             if n != '__version__' and n not in documented]
  assert not missing, f'docs/api.md lacks {missing}'

"""The quickstart notebook runs top to bottom (on tiny settings) so it can't rot."""

import os

import nbformat
import pytest

nbclient = pytest.importorskip('nbclient')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_TINY = """TASK = 'digits_mlp'
HORIZON = 60
LR_INTERVALS = 3
OUTER_STEPS = 2"""


def test_quickstart_runs():
  nb = nbformat.read(os.path.join(ROOT, 'notebooks', 'quickstart.ipynb'),
                     as_version=4)
  params = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
  assert len(params) == 1
  params[0].source = _TINY
  client = nbclient.NotebookClient(
      nb, timeout=600, kernel_name='python3',
      resources={'metadata': {'path': ROOT}})
  client.execute()
  outputs = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                    for o in c.get('outputs', []))
  assert 'outer step 1' in outputs
  assert 'test accuracy' in outputs
  # Progress bars render without the ipywidgets warning.
  stderr = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                   for o in c.get('outputs', []) if o.get('name') == 'stderr')
  assert 'IProgress not found' not in stderr, stderr
  # The Colab cell installs this project, never the unrelated "hypergrad".
  install = [c.source for c in nb.cells if '%pip install' in c.source]
  assert install and all('jax-hypergrad[' in s for s in install), install

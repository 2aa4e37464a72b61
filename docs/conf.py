"""Sphinx configuration: builds offline (no intersphinx), warnings are errors."""

import os
import shutil
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
sys.path.insert(0, ROOT)

from hypergrad._src.version import __version__  # noqa: E402

project = 'hypergrad'
author = 'the hypergrad authors'
release = version = __version__

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
    'myst_nb',
]
# Offline: no intersphinx, no notebook execution (the test suite executes the
# notebook), MathJax only referenced by URL (rendered by the reader's browser).
nb_execution_mode = 'off'
myst_enable_extensions = ['dollarmath']
autodoc_member_order = 'bysource'
autodoc_typehints = 'none'
autodoc_default_options = {'members': False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autosummary_generate = False
exclude_patterns = ['_build', '**.ipynb_checkpoints']
html_theme = 'sphinx_book_theme'
html_title = f'hypergrad {version}'
suppress_warnings = ['myst.header']

# The quickstart notebook lives in notebooks/; render the repository's copy.
os.makedirs(os.path.join(ROOT, 'docs', 'notebooks'), exist_ok=True)
shutil.copy(os.path.join(ROOT, 'notebooks', 'quickstart.ipynb'),
            os.path.join(ROOT, 'docs', 'notebooks', 'quickstart.ipynb'))

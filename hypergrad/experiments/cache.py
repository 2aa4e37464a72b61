"""A persistent XLA compilation cache for the launch script and benchmarks.

A forward hypergradient, a reverse one and the plain unroll each compile once
per process: seconds on CPU, every time a script starts. JAX can keep the
compiled executables on disk and reload them when the same program (same
jaxpr, shapes, dtypes, options and jax version) is compiled again, in this
process or a later one. :func:`enable_compilation_cache` turns that on for
every program, however quickly it compiled.

The cache is trusted code: anyone who can write to its folder can make the
process run what they like. Keep it in your own home (the default) or in a
folder only you can write to.

A rerun reads a forward hypergradient back in a fraction of its compile time
(figures: ``docs/benchmarks.md``).
"""

from __future__ import annotations

import logging
import os

import jax

ENV_VAR = 'HYPERGRAD_CACHE_DIR'
DEFAULT_DIR = os.path.join('~', '.cache', 'hypergrad', 'jax')


def default_cache_dir() -> str:
  """``$HYPERGRAD_CACHE_DIR`` if set and not empty, else the default folder."""
  return os.path.expanduser(os.environ.get(ENV_VAR) or DEFAULT_DIR)


def enable_compilation_cache(path: str | None = None) -> str | None:
  """Keeps every compiled program in a persistent cache folder.

  Sets ``jax_compilation_cache_dir`` and lowers JAX's thresholds (by
  default only programs that compiled for over a second are written) so
  that every program is cached, however small or quick to compile. Call it
  before the first compilation; later calls with another folder move the
  cache there.

  Args:
    path: the cache folder, created if missing; None:
      :func:`default_cache_dir`.

  Returns:
    The absolute folder in use, or None when it could not be created or
    written: the cache is then left off, with a log line saying why, and
    everything still runs (compiling as usual).

  Example:
    >>> from hypergrad.experiments import cache
    >>> cache.enable_compilation_cache()  # doctest: +SKIP
    '/home/me/.cache/hypergrad/jax'
  """
  folder = os.path.abspath(os.path.expanduser(path or default_cache_dir()))
  try:
    os.makedirs(folder, exist_ok=True)
    if not os.access(folder, os.W_OK | os.X_OK):
      raise PermissionError(f'{folder} is not writable')
  except OSError as e:
    logging.warning('hypergrad: compilation cache off, cannot use %s (%s).',
                    folder, e)
    return None
  if jax.config.jax_compilation_cache_dir not in (None, folder):
    # JAX opens its cache once per process: point it at the new folder.
    # pylint: disable-next=g-import-not-at-top
    from jax.experimental.compilation_cache import compilation_cache
    compilation_cache.reset_cache()
  jax.config.update('jax_compilation_cache_dir', folder)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  logging.info('hypergrad: compilation cache in %s', folder)
  return folder

"""The persistent compilation cache of the launch script and benchmarks."""

import logging
import os

import jax
from jax.experimental.compilation_cache import compilation_cache
import jax.numpy as jnp
import pytest

from hypergrad.experiments import cache

_FLAGS = ('jax_compilation_cache_dir',
          'jax_persistent_cache_min_compile_time_secs',
          'jax_persistent_cache_min_entry_size_bytes')


@pytest.fixture
def restore_jax_config():
  saved = {name: getattr(jax.config, name) for name in _FLAGS}
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def test_default_folder_from_environment(monkeypatch):
  monkeypatch.setenv(cache.ENV_VAR, '/some/where')
  assert cache.default_cache_dir() == '/some/where'
  monkeypatch.setenv(cache.ENV_VAR, '')
  assert cache.default_cache_dir() == os.path.expanduser(
      '~/.cache/hypergrad/jax')


def test_every_program_is_written_and_read_back(tmp_path,
                                                restore_jax_config):
  del restore_jax_config
  folder = cache.enable_compilation_cache(str(tmp_path / 'jax'))
  assert folder == str(tmp_path / 'jax')
  assert jax.config.jax_compilation_cache_dir == folder
  # A program far below JAX's default one-second threshold is kept too.
  jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.25).lower(
      jnp.ones(7)).compile()
  assert os.listdir(folder)


def test_unusable_folder_leaves_the_cache_off(tmp_path, caplog,
                                              restore_jax_config):
  del restore_jax_config
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a folder')
  before = jax.config.jax_compilation_cache_dir
  with caplog.at_level(logging.WARNING):
    assert cache.enable_compilation_cache(str(blocker / 'jax')) is None
  assert 'compilation cache off' in caplog.text
  assert jax.config.jax_compilation_cache_dir == before
  assert float(jax.jit(lambda x: x + 1)(1.0)) == 2.0  # still runs

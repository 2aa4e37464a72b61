"""Test configuration: float64 available and strict dtype promotion.

x64 is on so finite-difference checks are meaningful and so float32 code paths
are tested with explicit dtypes (an accidental promotion to float64 then shows
up). Strict promotion turns any silent float32/float64 mix into an error.
"""

import os
import tempfile

import jax

# The launch scripts that tests start keep their compiled programs here, not
# in the user's cache; the subprocesses of one test run share it.
os.environ.setdefault('HYPERGRAD_CACHE_DIR', os.path.join(
    tempfile.gettempdir(), f'hypergrad-test-jax-cache-{os.getuid()}'))

jax.config.update('jax_enable_x64', True)
jax.config.update('jax_numpy_dtype_promotion', 'strict')

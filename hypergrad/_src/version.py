"""The version of the package: the one source setup.cfg and the docs read."""

__version__ = '0.2.0'

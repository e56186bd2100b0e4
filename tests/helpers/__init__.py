"""Plain helpers the tests import (conftest.py holds only fixtures):

- repo: the repository's paths and params, subprocesses, temporary git + DVC repos, the
  network guard's environment
- badinput: crafted bad files, stage subprocesses, tree hashes (the bad-input tests)
- models: a tiny ResNet-18 checkpoint
- net: a free local port
"""

"""Shared test helpers.

- The repo root goes on sys.path so tests import `config`, `models`, ... without installing.
- REFERENCE_DIR is `<repo>/../shared/reference` (the PyTorch fixtures, docs/design.md §5);
  `require_reference(name)` returns a fixture's path or skips the test with the reason.
- `run_script(args, timeout, cwd)` runs a repo script the way a user would: this interpreter,
  cwd = the repo root unless given. A script that writes into its working directory (training and
  detection_test.py write ./experiments/) must run with cwd=tmp_path: tests write under tmp_path
  only. Tests import these names with `from conftest import ...`.
"""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_DIR = os.path.normpath(os.path.join(REPO, "..", "shared", "reference"))

if REPO not in sys.path:
    sys.path.insert(0, REPO)


def require_reference(name):
    """Path of reference fixture `name`; skips the calling test if the folder or file is absent."""
    if not os.path.isdir(REFERENCE_DIR):
        pytest.skip("reference fixtures folder %s is absent" % REFERENCE_DIR)
    path = os.path.join(REFERENCE_DIR, name)
    if not os.path.isfile(path):
        pytest.skip("reference fixture %s is absent" % path)
    return path


def run_script(args, timeout=300, cwd=REPO):
    """Run `python <args...>` in `cwd`; returns the CompletedProcess (text, not checked).

    args[0], the script, is taken relative to the repo root; other relative paths to `cwd`.
    PYTHONPATH carries the repo root so scripts import the packages even when the venv was not
    built by `make` (which adds the root through a .pth file).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    args = [os.path.join(REPO, str(args[0]))] + [str(a) for a in args[1:]]
    return subprocess.run([sys.executable] + args, cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def reference_dir():
    """REFERENCE_DIR, or a skip if it is absent."""
    if not os.path.isdir(REFERENCE_DIR):
        pytest.skip("reference fixtures folder %s is absent" % REFERENCE_DIR)
    return REFERENCE_DIR

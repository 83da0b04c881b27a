"""TensorFlow set-up on a Beam worker."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

from pipeline.tf_worker import _import_tensorflow

REPO = Path(__file__).resolve().parent.parent


def test_tensorflow_import_is_frozen_and_turns_the_collector_back_on():
    """The import pauses garbage collection, leaves TensorFlow's objects out of later
    collections, and resumes collection, in a fresh process."""
    code = (
        "import gc, sys; from pipeline.tf_worker import _import_tensorflow; "
        "assert 'tensorflow' not in sys.modules and gc.get_freeze_count() == 0; _import_tensorflow(); "
        "assert 'tensorflow' in sys.modules and gc.isenabled(); "
        "assert gc.get_freeze_count() > 100_000, gc.get_freeze_count(); print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_a_paused_collector_stays_paused():
    """A caller that paused collection itself keeps it paused (TensorFlow already loaded here)."""
    gc.disable()
    try:
        _import_tensorflow()
        assert not gc.isenabled()
    finally:
        gc.enable()

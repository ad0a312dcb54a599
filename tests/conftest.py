"""Shared fixtures: every test gets its own lab in a temp dir, never the repo itself."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lab_helpers import isolate

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # tests import the packages from the checkout
    sys.path.insert(0, str(ROOT))


# The suite runs on two pytest-xdist workers with --dist loadfile (`make test`): each
# module's tests stay together on one worker, so its module-scoped fixtures (a trained lab,
# say) are built once and a test may build on the one before it. Only tests/test_slurm.py
# uses the localhost Slurm cluster, so no two of its tests run side by side.


@pytest.fixture(scope="session", autouse=True)
def _isolated_session():
    """Module-scoped fixtures that train a lab once run before any test's own isolation: the
    session is isolated first, so they never see the developer's API key or git identity."""
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp)
        yield


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test sees the developer's API key, lab or git identity (lab_helpers.isolate)."""
    isolate(monkeypatch)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """A test that builds a Trainer in this process leaves accelerate's process-wide state
    behind (its precision included); the next test's Accelerator would refuse another
    precision. Tests of one module share a worker process, so each starts clean."""
    yield
    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()


@pytest.fixture
def fake():
    """A fake Anthropic Messages API on 127.0.0.1 (tests/fake_anthropic.py), stopped after the test."""
    from fake_anthropic import FakeAnthropic

    server = FakeAnthropic().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def bundled(tmp_path_factory):
    """The bundled small data, built once per session (the build is deterministic); labs copy from it."""
    from corpus.build import build

    out = tmp_path_factory.mktemp("bundled")
    build(out, "small", progress=False)
    return out


@pytest.fixture(scope="session")
def bundled_data(bundled):
    return bundled

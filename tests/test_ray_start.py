"""A local Ray start that misses its window is tried again from a clean shutdown, then reported with logs.

Ray cannot be made to miss its 30 s window on demand, so a stand-in with Ray's calling surface plays the
cluster; the real start is covered by tests/test_ray_engine.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shelfsight.embeddings.ray_start import LOCAL_START_ATTEMPTS, RayStartError, start_ray

TIMEOUT = Exception("The current node timed out during startup. This could happen because some of the "
                    "raylet failed to startup or the GCS has become overloaded.")


class FlakyRay:
    """Fails ``failures`` starts the way Ray 2.60 does, then starts."""

    def __init__(self, failures: int, error: Exception = TIMEOUT) -> None:
        self.failures, self.error = failures, error
        self.calls: list[str] = []

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs: Any) -> None:
        self.calls.append(f"init num_cpus={kwargs.get('num_cpus')}")
        if self.failures:
            self.failures -= 1
            raise self.error

    def shutdown(self) -> None:
        self.calls.append("shutdown")


def test_a_missed_start_window_is_retried_after_a_clean_shutdown() -> None:
    ray = FlakyRay(failures=LOCAL_START_ATTEMPTS - 1)
    start_ray(ray, address=None, num_cpus=2)
    assert ray.calls == ["init num_cpus=2", "shutdown"] * (LOCAL_START_ATTEMPTS - 1) + ["init num_cpus=2"]


def test_a_start_that_keeps_failing_says_so_with_rays_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logs = tmp_path / "ray" / "session_latest" / "logs"
    logs.mkdir(parents=True)
    (logs / "raylet.out").write_text("\n".join(f"line {i}" for i in range(40)) + "\nraylet: cannot bind port\n")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    ray = FlakyRay(failures=99)
    with pytest.raises(RayStartError, match=f"did not start after {LOCAL_START_ATTEMPTS} tries") as raised:
        start_ray(ray, address=None, num_cpus=2)
    assert "raylet: cannot bind port" in str(raised.value) and "line 10" not in str(raised.value)
    assert ray.calls.count("init num_cpus=2") == LOCAL_START_ATTEMPTS


def test_other_errors_are_not_retried() -> None:
    ray = FlakyRay(failures=1, error=ValueError("num_cpus must be positive"))
    with pytest.raises(RayStartError, match="after 1 try "):
        start_ray(ray, address=None, num_cpus=2)
    assert ray.calls == ["init num_cpus=2", "shutdown"]

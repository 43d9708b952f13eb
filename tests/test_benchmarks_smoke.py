"""The benchmark suite (``python -m benchmarks``) in smoke mode: every scenario once, tiny sizes.

Run as a subprocess from the repository root, on the session's real redis-server. The peer
libraries (Authlib, httpx, gcloud-aio-auth) are optional: without them the benchmark reports
them as "not installed" and the test still runs and passes; the second test hides them on
purpose to check exactly that.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = [
    "hot_path",
    "cold_stampede",
    "stale_window",
    "shared_credential",
    "middleware",
    "dpop",
    "scale",
    "multi_tenant",
    "events",
    "stores",
]
# Run the CLI with the peers made unimportable (as if not installed).
HIDE_PEERS = (
    "import runpy, sys\n"
    "for name in ('authlib', 'gcloud', 'httpx'):\n"
    "    sys.modules[name] = None\n"
    "runpy.run_module('benchmarks', run_name='__main__', alter_sys=True)\n"
)

pytestmark = pytest.mark.slow


def run_smoke(out: Path, redis_url: str, *args: str, hide_peers: bool = False) -> dict[str, Any]:
    head = (
        [sys.executable, "-c", HIDE_PEERS] if hide_peers else [sys.executable, "-m", "benchmarks"]
    )
    command = [*head, "--smoke", "--out", str(out), "--redis-url", redis_url, *args]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=110, check=False
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    assert "target(s) missed" in done.stdout  # the table was printed
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    return data


def rows_of(data: dict[str, Any], scenario: str) -> list[dict[str, Any]]:
    (found,) = [s for s in data["scenarios"] if s["name"] == scenario]
    rows: list[dict[str, Any]] = found["rows"]
    return rows


def test_smoke_runs_every_scenario_and_writes_results(tmp_path: Path, redis_url: str) -> None:
    data = run_smoke(tmp_path, redis_url)

    assert [s["name"] for s in data["scenarios"]] == SCENARIOS
    assert data["mode"] == "smoke"
    for field in ("date", "cpu", "cores", "python", "versions"):
        assert data[field], field
    assert data["versions"]["asynctoken"]
    assert data["versions"]["aiohttp"]
    all_rows = [row for s in data["scenarios"] for row in s["rows"]]
    assert [row for row in all_rows if row["status"] == "ERROR"] == []
    assert all(row["status"] in {"met", "MISSED", "info", "not installed"} for row in all_rows)
    markdown = (tmp_path / "results.md").read_text()
    assert "| scenario" in markdown
    assert data["cpu"] in markdown

    # Correctness figures hold at any size; timing targets are not judged in smoke mode.
    stampede = rows_of(data, "cold_stampede")[0]
    assert stampede["asynctoken"] == "1"
    assert stampede["status"] == "met"
    shared = [r for r in rows_of(data, "shared_credential") if "Store" in r["metric"]]
    assert len(shared) == 2
    for row in shared:
        assert row["values"]["failed"] == 0, row
        assert row["values"]["reuse_detected"] == 0, row
        assert max(row["values"]["per_cycle"]) == 1, row
    (requests,) = [r for r in rows_of(data, "multi_tenant") if r["metric"] == "token requests"]
    assert requests["status"] == "met", requests
    assert rows_of(data, "stale_window")[0]["values"]["waited"] == [0]


def test_smoke_reports_missing_peers_as_not_installed(tmp_path: Path, redis_url: str) -> None:
    data = run_smoke(tmp_path, redis_url, "--only", "hot_path,cold_stampede", hide_peers=True)

    rows = rows_of(data, "hot_path") + rows_of(data, "cold_stampede")
    assert [row for row in rows if row["status"] == "ERROR"] == []
    missing = [row["metric"] for row in rows if row["status"] == "not installed"]
    assert missing == [
        "vs Authlib ensure_active_token",
        "vs gcloud-aio-auth Token.get",
        "vs Authlib wall time",
    ]
    assert rows_of(data, "hot_path")[0]["status"] in {"met", "MISSED"}

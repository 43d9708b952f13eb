"""The results: one table on the terminal, ``results.md`` and ``results.json``, and the optional
``results.png`` chart."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from . import _peers
from ._harness import ScenarioResult, fmt_bytes, fmt_ratio

__all__ = ["machine", "print_table", "write_chart", "write_json", "write_markdown"]

COLUMNS = ("scenario", "metric", "asynctoken", "compared with", "ratio", "target", "result")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _redis_server_version(url: str | None) -> str | None:
    if url is None:
        return None
    try:
        import redis

        with redis.Redis.from_url(url, socket_timeout=2) as client:
            return str(client.info("server")["redis_version"])
    except Exception:  # a version is nice to have, never worth failing the report
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent.parent,
            check=False,
        )
    except OSError:
        return None
    return out.stdout if out.returncode == 0 else None


def _git_state() -> tuple[str | None, list[str]]:
    """The commit (``-dirty`` when the tree has changes) and the changed library files."""
    commit = (_git("describe", "--always", "--dirty") or "").strip() or None
    status = _git("status", "--porcelain", "--", "asynctoken") or ""
    return commit, [line[3:] for line in status.splitlines() if line.strip()]


def machine(redis_url: str | None) -> dict[str, Any]:
    """Date, hardware, software versions."""
    memory = None
    try:
        import psutil

        memory = fmt_bytes(psutil.virtual_memory().total)
    except ImportError:
        pass
    versions = {
        name: _peers.version(name)
        for name in ("asynctoken", "aiohttp", *_peers.PEER_DISTRIBUTIONS, "redis", "psutil")
    }
    versions["redis-server"] = _redis_server_version(redis_url)
    commit, changed = _git_state()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory": memory,
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "git_commit": commit,
        "uncommitted_library_files": changed,
        "versions": versions,
    }


def _cells(results: list[ScenarioResult], *, markdown: bool) -> list[list[str]]:
    table: list[list[str]] = []
    for result in results:
        for index, row in enumerate(result.rows):
            status = row.result
            if markdown and row.status == "MISSED":
                status = f"**{status}**"
            table.append(
                [
                    result.title if index == 0 else "",
                    row.metric,
                    row.asynctoken,
                    row.compared,
                    fmt_ratio(row.ratio) if row.ratio is not None else "",
                    row.target,
                    status,
                ]
            )
    return table


def print_table(results: list[ScenarioResult], info: dict[str, Any], mode: str) -> None:
    """The table on stdout, as Markdown (readable as plain text too)."""
    print()
    print(f"asynctoken benchmarks ({mode}), {info['date']}")
    print(
        f"{info['cpu']}, {info['cores']} cores, {info['python']}, asynctoken "
        f"{info['versions']['asynctoken']}, aiohttp {info['versions']['aiohttp']}"
    )
    print()
    print(_markdown_table(_cells(results, markdown=False)))
    missed = [(r.title, row) for r in results for row in r.rows if row.status == "MISSED"]
    errors = [(r.title, row) for r in results for row in r.rows if row.status == "ERROR"]
    print()
    print(f"{len(missed)} target(s) missed, {len(errors)} scenario error(s).")
    for title, row in errors:
        print(f"ERROR in {title}: {row.detail}")


def _markdown_table(cells: list[list[str]]) -> str:
    widths = [max(len(c[i]) for c in [list(COLUMNS), *cells]) for i in range(len(COLUMNS))]

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(list(COLUMNS)), rule, *(line(c) for c in cells)])


def write_markdown(
    path: Path, results: list[ScenarioResult], info: dict[str, Any], mode: str, seconds: float
) -> None:
    versions = ", ".join(f"{k} {v or 'not installed'}" for k, v in info["versions"].items())
    lines = [
        f"# asynctoken benchmarks ({mode})",
        "",
        f"- Date: {info['date']} (git {info['git_commit'] or 'unknown'}"
        + (
            f"; uncommitted changes in {', '.join(info['uncommitted_library_files'])})"
            if info["uncommitted_library_files"]
            else ")"
        ),
        f"- Machine: {info['cpu']}, {info['cores']} cores, {info['memory'] or '? RAM'}, "
        f"{info['os']}",
        f"- Python: {info['python']}",
        f"- Versions: {versions}",
        f"- Total run time: {seconds:.0f} s",
        "",
        "Every figure is a median of repeated runs; every ratio is taken in the same process "
        "and run, contenders interleaved (the median of per-round ratios). Ratios are "
        "asynctoken / comparison: below 1 means asynctoken is faster (or smaller).",
        "",
        _markdown_table(_cells(results, markdown=True)),
        "",
        "## Details",
        "",
    ]
    for result in results:
        lines.append(f"### {result.title} ({result.seconds:.0f} s)")
        lines.append("")
        for row in result.rows:
            if row.detail:
                lines.append(f"- **{row.metric}** ({row.result}): {row.detail}")
        for note in result.notes:
            lines.append(f"- {note}")
        lines.append("")
    path.write_text("\n".join(lines))


def write_json(
    path: Path, results: list[ScenarioResult], info: dict[str, Any], mode: str, seconds: float
) -> None:
    data = {
        "mode": mode,
        "seconds": round(seconds, 1),
        **info,
        "scenarios": [
            {
                "name": r.name,
                "title": r.title,
                "seconds": round(r.seconds, 1),
                "rows": [row.to_json() for row in r.rows],
                "notes": r.notes,
                "raw": r.raw,
            }
            for r in results
        ],
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def write_chart(path: Path, results: list[ScenarioResult]) -> bool:
    """A bar per ratio that has a target, the target drawn across it; ``False`` without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [
        (f"{r.name}: {row.metric}", row)
        for r in results
        for row in r.rows
        if row.ratio is not None and row.limit is not None
    ]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(rows) + 1.5))
    labels = [label[:70] for label, _ in rows]
    ratios = [row.ratio or 0.0 for _, row in rows]
    colors = ["tab:green" if row.status == "met" else "tab:red" for _, row in rows]
    positions = list(range(len(rows)))
    ax.barh(positions, ratios, color=colors)
    for y, (_, row) in zip(positions, rows, strict=True):
        limit = row.limit or 0.0
        ax.plot([limit, limit], [y - 0.4, y + 0.4], color="black", linewidth=2)
        ax.text((row.ratio or 0.0) + 0.02, y, f"{row.ratio:.2f}×", va="center", fontsize=8)
    ax.set_yticks(positions, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio asynctoken / comparison (black bar: target)")
    ax.set_title("asynctoken benchmarks: green met, red missed")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True

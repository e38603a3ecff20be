"""Keystroke to ghost text in the real VS Code (code-server in headless Chromium, the packaged
extension, the shipped model), with and without the server's typed-ahead reuse and prefetch.

A scripted session types the start of a statement into a function body (fixed text, 90 ms a key),
pauses for a suggestion, types the first characters of what it shows (typed ahead), takes it with Tab, and goes
on with Enter, until `--keystrokes` keys were pressed. In the page, a keydown listener and a
MutationObserver on the ghost text share one clock; a keystroke's latency is the time until the
ghost text (non-empty) next changes, if it does before the next key. The two modes run in turns
(A, B, A, B ...) on fresh code-server instances.

    python -m benchmarks.vscode_latency [--keystrokes 200] [--rounds 2] [--out docs/bench]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.editors.code_server import Unavailable, code_server, ensure_code_server, ensure_extension, run_driver
from tests.editors.test_vscode import make_workspace, user_settings

from .report import pyplot, write_json

# What the script types before each pause: the start of a statement; the suggestion does the rest.
LINES = ["count = ", "total = ", "if count == 0:", "return ", "squares = ", "result = "]
MODES = {"reuse+prefetch": {"codeAssistant.typedAheadReuse": True, "codeAssistant.prefetch": True},
         "neither": {"codeAssistant.typedAheadReuse": False, "codeAssistant.prefetch": False}}
# Ghost text this soon after a key came without a generation (from the server's cache, or VS Code
# keeping the rest of a suggestion the user is typing); a generation here takes 250 ms or more.
FRAME_BUDGET_MS = 50
# The suggest widget off, as in the first measurements (docs/editors.md), so the runs compare.
EDITOR = {"editor.wordBasedSuggestions": "off"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_mode(binary, vsix, settings: dict, keystrokes: int, out: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        workspace = make_workspace(home)
        with code_server(binary, vsix, workspace, home, user_settings(**EDITOR, **settings)) as server:
            result = run_driver("latency", server["url"], workspace, out, 900, after="def describe(values):",
                                lines=LINES, keystrokes=keystrokes, char_delay_ms=90, pause_ms=1500, follow_chars=4)
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keystrokes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each mode, taken in turns")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    try:
        binary, vsix = ensure_code_server(), ensure_extension()
    except Unavailable as error:
        print(f"vscode_latency: {error}", file=sys.stderr)
        return 2
    latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
    counts: dict[str, dict] = {mode: {"keys": 0, "with_ghost": 0} for mode in MODES}
    for round_ in range(args.rounds):
        for mode, settings in MODES.items():
            started = time.monotonic()
            result = run_mode(binary, vsix, settings, args.keystrokes, args.out / f"vscode-{mode}-{round_}")
            shown = [ms for ms in result["latencies_ms"] if ms is not None]
            latencies[mode] += shown
            counts[mode]["keys"] += result["keys"]
            counts[mode]["with_ghost"] += len(shown)
            print(f"round {round_ + 1}/{args.rounds} {mode}: {result['keys']} keys, {len(shown)} with ghost text, "
                  f"p50 {statistics.median(shown):.0f} ms ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    report = {"what": "keystroke to ghost text in code-server 4.100.3 (VS Code 1.100.3), headless Chromium, "
                      "models/default, 2 shared CPU cores", "keystrokes_per_run": args.keystrokes,
              "rounds": args.rounds, "editor_settings": EDITOR, "modes": {}}
    for mode in MODES:
        values = latencies[mode]
        report["modes"][mode] = {"p50_ms": round(percentile(values, 0.5), 1), "p95_ms": round(percentile(values, 0.95), 1),
                                 "keys": counts[mode]["keys"], "keys_with_ghost": counts[mode]["with_ghost"],
                                 "keys_with_ghost_within_50ms": sum(v <= FRAME_BUDGET_MS for v in values),
                                 "latencies_ms": [round(v, 1) for v in values]}
    write_json(args.out / "vscode_latency.json", report)
    plot(report, args.out / "vscode_latency.png")
    for mode, row in report["modes"].items():
        print(f"{mode}: p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms, ghost text after "
              f"{row['keys_with_ghost']}/{row['keys']} keys ({row['keys_with_ghost_within_50ms']} within 50 ms)")
    return 0


def plot(report: dict, path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, row in report["modes"].items():
        values = sorted(row["latencies_ms"])
        if values:
            ax.plot(values, [i / len(values) for i in range(1, len(values) + 1)],
                    label=f"{mode}: p50 {row['p50_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms")
    ax.set_xlabel("keystroke to ghost text (ms)")
    ax.set_ylabel("fraction of keystrokes with ghost text")
    ax.set_title("Real VS Code (code-server), models/default")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())

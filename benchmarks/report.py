"""What every benchmark ends with: its JSON report and its chart."""
from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, report: dict) -> None:
    """`report` as indented JSON at `path`, its folder made first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def pyplot():
    """matplotlib.pyplot without a display (the Agg backend), imported only when a chart is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

"""Run folders as training leaves them (finished, in progress, not started) and the files a page links:
shared by the figure and page tests."""

import json
import re
from pathlib import Path
from urllib.parse import unquote


def linked_files(page: Path) -> list[Path]:
    """The files a page links (src and href), resolved beside it."""
    return [page.parent / unquote(link) for link in re.findall(r'(?:src|href)="([^"]+)"', page.read_text())]


def write_run(run_dir: Path, csv_text: str | None, epochs: int | None) -> Path:
    run_dir.mkdir(parents=True)
    if csv_text is not None:
        (run_dir / "logs" / "csv").mkdir(parents=True)
        (run_dir / "logs" / "csv" / "metrics.csv").write_text(csv_text)
    if epochs is not None:
        (run_dir / "summary.json").write_text(json.dumps({"epochs": epochs}))
    return run_dir


# As Lightning writes it: loss per step, validation per epoch, then the best checkpoint validated again.
METRICS = """epoch,step,train/loss,val/loss,val/score,val/score_class1
0,0,1.0,,,
0,1,0.8,,,
0,1,,0.5,0.6,0.7
1,2,0.6,,,
1,3,0.4,,,
1,3,,0.3,0.8,0.9
2,4,,0.3,0.8,0.9
"""


def make_runs(root: Path) -> list[Path]:
    """A finished fold, a fold in progress that logs no validation loss, and one with no log yet."""
    return [
        write_run(root / "unet" / "fold0", METRICS, epochs=2),
        write_run(root / "unet" / "fold1", "epoch,step,train/loss,val/score\n0,0,0.9,\n0,0,,0.5\n", None),
        write_run(root / "unet" / "fold2", None, None),
    ]

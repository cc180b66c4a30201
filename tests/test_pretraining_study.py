"""The pretraining study's table is what compare.py makes from the records kept with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = Path("simulations/pretraining/regime")


def test_the_regime_table_is_made_again_from_its_kept_records(tmp_path: Path):
    compare = ["simulations/pretraining/compare.py", str(STUDY / "records")]
    subprocess.run(
        [sys.executable, *compare, "--out", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "comparison.md").read_text() == (ROOT / STUDY / "comparison.md").read_text()
    assert (tmp_path / "val_loss_vs_tokens.png").stat().st_size > 0

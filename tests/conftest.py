import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so a bare `pytest` finds desta.py & co. like `python -m pytest` does

# real third-party files shared beside the project (absent in a user's clone: tests skip)
FIXTURES = ROOT.parent / "shared" / "fixtures"

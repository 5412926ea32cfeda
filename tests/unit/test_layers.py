"""The library layer never imports kfp: step logic stays testable without KFP."""

import ast
from pathlib import Path

LIBRARY = Path(__file__).parents[2] / "src" / "ftpipe"


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_no_module_under_src_ftpipe_imports_kfp():
    offenders = {
        str(path.relative_to(LIBRARY)): sorted(m for m in _imported_modules(path) if m.split(".")[0] == "kfp")
        for path in LIBRARY.rglob("*.py")
    }
    offenders = {path: modules for path, modules in offenders.items() if modules}
    assert offenders == {}


def test_the_check_sees_an_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from kfp import dsl\n")
    assert "kfp" in _imported_modules(sample)

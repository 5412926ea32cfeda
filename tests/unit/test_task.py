"""ftpipe.task: what every pipeline task does around its step."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from ftpipe import task


@pytest.fixture
def unfrozen():
    yield
    gc.unfreeze()


def test_load_libraries_imports_them_and_leaves_the_collector_on_with_them_frozen(unfrozen):
    gc.unfreeze()
    sys.modules.pop("colorsys", None)
    task.load_libraries(["colorsys"])
    assert "colorsys" in sys.modules
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0


def test_load_libraries_restores_the_collector_when_an_import_fails(unfrozen):
    with pytest.raises(ModuleNotFoundError):
        task.load_libraries(["no_such_module_here"])
    assert gc.isenabled()


def test_what_the_step_built_is_frozen_at_exit():
    """Sparing the interpreter's final collections the step's objects: see load_libraries."""
    script = (
        "import atexit, gc\n"
        # registered first, so it runs last: after load_libraries' hook
        "atexit.register(lambda: print('step objects frozen:', gc.get_freeze_count() - loaded >= 900))\n"
        "from ftpipe import task\n"
        "task.load_libraries(['json'])\n"
        "loaded = gc.get_freeze_count()\n"
        "built_by_the_step = [[i] for i in range(1000)]\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "step objects frozen: True"

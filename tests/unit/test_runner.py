"""The console of `ftpipe run --local`: what it shows, and the kfp.local condition misreads it must not let pass."""

import io

from pipelines.runner import _ConsoleFilter


def test_a_condition_kfp_could_not_evaluate_is_recorded_and_shown(capsys):
    log = io.StringIO()
    console = _ConsoleFilter(log)
    console.write("10:00:00.1 - INFO - Executing task 'compare-data'\n")
    console.write("    [KFP Executor 2026-01-01 10:00:00,2 INFO]: Got executor_input: {...}\n")
    console.write("10:00:01.0 - WARNING - Could not resolve parent input: compare-data-changed\n")
    console.write("10:00:01.1 - INFO - Skipping conditional task condition-4 (condition evaluated to False)\n")

    assert console.misread == ["Could not resolve parent input: compare-data-changed"]
    shown = capsys.readouterr().out
    assert "Executing task 'compare-data'" in shown and "Could not resolve parent input" in shown
    assert "Got executor_input" not in shown and "Skipping conditional task" not in shown
    assert "Got executor_input" in log.getvalue()  # the log keeps everything


def test_an_ordinary_run_records_no_misread():
    console = _ConsoleFilter(io.StringIO())
    console.write("10:00:01.1 - INFO - Skipping conditional task condition-20 (condition evaluated to False)\n")
    console.write("10:00:02.0 - INFO - Task 'compare-data' finished with status SUCCESS\n")
    assert console.misread == []

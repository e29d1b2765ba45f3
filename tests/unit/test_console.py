"""The quiet console (emoray.console): what reaches the screen, what only the log file.

The worker-output handler is fed batches in the shape Ray's log monitor hands the driver
(``{"pid", "actor_name", "is_err", "lines"}``); the end-to-end check, a real embedded Ray
run of ``emoray ingest``, is tests/integration/test_cli.py.
"""

from __future__ import annotations

import pytest

from emoray import console


@pytest.fixture
def driver(tmp_path):
    path = console.configure(tmp_path / "logs")
    yield path
    console.close()
    console._state["driver"] = False


def test_configure_makes_the_log_file_and_says_where(driver, tmp_path):
    assert driver == tmp_path / "logs" / console.LOG_NAME and driver.is_file()
    assert str(driver) in console.where() and "emoray -v" in console.where()
    console.close()
    console.configure(tmp_path / "v", verbose=True)
    assert console.verbose() and "emoray -v" not in console.where()


def test_worker_lines_go_to_the_log_and_marked_lines_to_the_console(driver, capsys):
    console._handle_worker_logs({
        "pid": 41, "actor_name": "SplitCoordinator", "is_err": True,
        "lines": ["Starting execution of Dataset train_2_0. Full logs are in /tmp/x",
                  "Execution plan of Dataset train_2_0: InputDataBuffer[Input] -> ...",
                  "TrainingReport(checkpoint=None, metrics={'val_acc': 0.5})"]})
    console._handle_worker_logs({"pid": 42, "actor_name": "RayTrainWorker", "is_err": False,
                                 "lines": [console.MARK + "[inter] 40 pairs: batch size 8"]})
    out = capsys.readouterr().out
    assert out.splitlines() == ["[inter] 40 pairs: batch size 8"]
    logged = driver.read_text()
    assert "(SplitCoordinator pid=41 err) Starting execution of Dataset train_2_0" in logged
    assert "TrainingReport(" in logged and "[inter] 40 pairs" in logged


def test_a_worker_error_still_shows(driver, capsys):
    console._handle_worker_logs({
        "pid": 7, "task_name": "process_group", "is_err": True,
        "lines": ["Traceback (most recent call last):", '  File "x.py", line 3, in f',
                  "ValueError: channel Fz missing", "some warning"]})
    out = capsys.readouterr().out.splitlines()
    assert out == ["worker process_group: ValueError: channel Fz missing"]
    assert 'File "x.py", line 3' in driver.read_text()


def test_verbose_hands_the_rest_to_rays_printer(tmp_path, capsys):
    console.configure(tmp_path, verbose=True)
    seen = []
    try:
        console._handle_worker_logs({"pid": 1, "is_err": False,
                                     "lines": ["Execution plan ...", console.MARK + "hello"]},
                                    ray_printer=seen.append)
    finally:
        console.close()
    assert capsys.readouterr().out == "hello\n"
    assert seen == [{"pid": 1, "is_err": False, "lines": ["Execution plan ..."]}]


def test_epoch_lines_are_thinned_off_a_terminal_and_all_logged(driver, capsys):
    for k in range(1, 21):
        console._handle_worker_logs({"pid": 5, "is_err": False, "lines": [
            console.MARK + f"[fusion] epoch {k}/20 steps={k * 4} loss=1.0"]})
    shown = capsys.readouterr().out.splitlines()
    assert [s.split()[2] for s in shown] == ["1/20", "20/20"]
    assert driver.read_text().count("[fusion] epoch ") == 20
    for k in range(1, 21):                     # the stage again (another seed): its end
        console._handle_worker_logs({"pid": 6, "is_err": False, "lines": [
            console.MARK + f"[fusion] epoch {k}/20 steps={k * 4} loss=0.9"]})
    assert capsys.readouterr().out == "[fusion] epoch 20/20 steps=80 loss=0.9\n"
    assert driver.read_text().count("[fusion] epoch ") == 40


def test_runs_side_by_side_show_one_first_epoch_and_each_last(driver, capsys):
    # three seeds' runs in one pool: their epoch lines arrive interleaved
    for k in range(1, 4):
        for pid in (7, 8, 9):
            console._handle_worker_logs({"pid": pid, "is_err": False, "lines": [
                console.MARK + f"[intra] epoch {k}/3 loss={pid}"]})
    shown = capsys.readouterr().out.splitlines()
    assert shown == ["[intra] epoch 1/3 loss=7", "[intra] epoch 3/3 loss=7",
                     "[intra] epoch 3/3 loss=8", "[intra] epoch 3/3 loss=9"]
    assert driver.read_text().count("[intra] epoch ") == 9


def test_the_clusters_error_messages_go_through_the_same_printer(driver, capsys):
    # the raylet's warnings and a task's unhandled error arrive as one multi-line message
    console._handle_worker_logs({"pid": "raylet", "is_err": False, "lines": [
        "WARNING: 8 PYTHON worker processes have been started on node: 68af",
        "Unhandled error (suppress with 'RAY_IGNORE_UNHANDLED_ERRORS=1'): Traceback (most "
        "recent call last):\n  File \"t.py\", line 1\nZeroDivisionError: division by zero"]})
    assert capsys.readouterr().out == "worker raylet: ZeroDivisionError: division by zero\n"
    assert "8 PYTHON worker processes" in driver.read_text()


def test_remote_echo_in_the_driver_prints_once(driver, capsys):
    console.remote_echo("[classifier] epoch 1/1 val_f1=0.5")
    assert capsys.readouterr().out == "[classifier] epoch 1/1 val_f1=0.5\n"


def test_progress_off_a_terminal_prints_a_few_plain_lines(driver, capsys):
    with console.Progress(40, "ingest", unit="shard", every=0.0) as bar:
        for _ in range(40):
            bar.update()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["10/40", "20/40", "30/40", "40/40"]
    assert all(line.startswith("  ingest: ") and "shards" in line for line in lines)
    with console.Progress(40, "slow", every=3600.0) as bar:     # at most one per hour...
        for _ in range(40):
            bar.update()
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()] == ["40/40"]


def test_rays_python_loggers_log_info_to_the_file_and_only_errors_to_the_console(
        driver, capsys):
    import logging

    lg = logging.getLogger("ray.data")
    console_handler = logging.StreamHandler()          # what Ray Data sets up in a driver
    lg.addHandler(console_handler)
    try:
        console.quiet_ray_loggers()
        lg.info("Starting execution of Dataset x")
        lg.warning("Progress bars disabled")
        lg.error("object store is full")
    finally:
        lg.removeHandler(console_handler)
        console.close()
    err = capsys.readouterr().err
    assert "object store is full" in err and "Starting execution" not in err
    assert "Progress bars" not in err
    logged = driver.read_text()
    for text in ("Starting execution of Dataset x", "Progress bars", "object store is full"):
        assert logged.count(text) == 1

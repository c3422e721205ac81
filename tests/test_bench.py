"""The benchmark harness (bench/): what its exit status and its --check say.

`make bench` and `--check` are how a broken or slower kernel gets noticed, so a
row that errors, an output that disagrees with fused's, a fused candidate the
baseline measured and a run did not, and a check that compared nothing must
all fail; a bad option must be refused before anything runs. The oracle is the
records themselves: synthetic ones for --check, one tiny real run for the exit
status.
"""

import copy
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402
import run  # noqa: E402


def _row(key, fused_ms, nn_ms=2.0, spread=0.01, **extra):
    def cand(ms):
        return {"median_ms": ms, "q1_ms": ms * (1 - spread / 2), "q3_ms": ms * (1 + spread / 2)}

    return {"key": key, "case": {}, "candidates": {"fused": cand(fused_ms), "nn-native": cand(nn_ms)}, **extra}


def _record(rows, machine="m"):
    return {"schema": report.SCHEMA, "suite": "quick", "machine": machine, "rows": rows}


BASE = _record([_row("a", 1.0), _row("b", 1.0)])


def _check(new, **kw):
    cmp = report.compare(BASE, new, **kw)
    print(report.check_text(cmp))
    return cmp


def test_check_passes_an_identical_run_and_flags_a_slower_one():
    assert not report.check_failed(_check(copy.deepcopy(BASE)))
    slower = _record([_row("a", 1.5), _row("b", 1.0)])
    cmp = _check(slower)
    assert report.check_failed(cmp) and [x["key"] for x in cmp["regressions"]] == ["a"]
    assert not report.check_failed(_check(_record([_row("a", 0.5), _row("b", 1.0)])))


@pytest.mark.parametrize("broken", ["error", "fused absent", "mismatch"])
def test_check_fails_a_row_this_run_broke(broken):
    row = _row("a", 1.0)
    if broken == "error":
        row = {"key": "a", "case": {}, "candidates": {}, "error": "RuntimeError: boom"}
    elif broken == "fused absent":
        del row["candidates"]["fused"]
    else:
        row["mismatch"] = True
    cmp = _check(_record([row, _row("b", 1.0)]))
    assert report.check_failed(cmp)
    assert [f["key"] for f in cmp["failures"]] == ["a"]
    assert "FAILED" in report.check_text(cmp)


def test_check_that_compared_nothing_fails():
    assert report.check_failed(_check(_record([_row("c", 1.0)])))


def test_check_names_other_machines_and_rows_on_one_side_only():
    text = report.check_text(report.compare(BASE, _record([_row("a", 1.0), _row("c", 1.0)], machine="other")))
    assert "ran on m, this run on other" in text
    assert "1 baseline rows not in this run" in text and "1 rows of this run not in the baseline" in text


@pytest.mark.parametrize("content", ["{", "", "[1, 2]", json.dumps({"schema": report.SCHEMA, "rows": [{}]})],
                         ids=["truncated", "empty", "a list", "rows without keys"])
def test_a_bad_record_is_a_clear_error(tmp_path, content):
    p = tmp_path / "r.json"
    p.write_text(content)
    with pytest.raises(SystemExit) as info:
        report.load(p)
    assert str(p) in str(info.value)
    with pytest.raises(SystemExit):
        report.load(tmp_path / "missing.json")


@pytest.mark.parametrize("argv", [
    ["--cell", "foo"], ["-T", "-5"], ["-H", "0"], ["--dirs", "3"], ["--dtype", "float8"], ["--mode", "infer"],
    ["--threads", "0"], ["--baselines", "bogus"], ["--cell", "gru", "--variant", "peephole"], ["-T", ","],
    ["--limit", "0"], ["--min-rounds", "-2"], ["--device", "tpu"], ["--check-candidates", "bogus"],
    ["--update-readme", "/nonexistent-folder/README.md"], ["--no-save", "--update-readme", "x.md"],
], ids=lambda a: " ".join(a))
def test_bad_options_are_refused_before_running(argv, capsys):
    with pytest.raises(SystemExit) as info:
        run.parse_args(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


TINY = ["-T", "4", "-N", "1", "-H", "8", "--mode", "inference", "--threads", "1", "--budget", "0.02",
        "--min-rounds", "3", "--warmup", "0.01", "--block", "0.002", "--quiet", "--no-save", "--no-memory"]


def test_exit_status_of_a_run(monkeypatch):
    """0 for a clean run; 1 when a row errors or its output disagrees with
    fused's (here: fused broken on purpose)."""
    import fusedrnn

    assert run.main(["--cell", "gru", *TINY]) == 0

    def broken(self, *args, **kwargs):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(fusedrnn.GRU, "forward", broken)
    assert run.main(["--cell", "gru", *TINY]) == 1
    monkeypatch.undo()

    real = fusedrnn.LSTM.forward

    def wrong(self, *args, **kwargs):
        y, h = real(self, *args, **kwargs)
        return y * 1.5, h

    monkeypatch.setattr(fusedrnn.LSTM, "forward", wrong)
    assert run.main(["--cell", "lstm", *TINY]) == 1

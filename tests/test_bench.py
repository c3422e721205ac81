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
import os
import subprocess
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
    ["--resume", "r.json", "--cell", "gru"], ["--resume", "r.json", "--limit", "3"], ["--time-limit", "0"],
    ["--resume", "r.json", "--no-save"], ["--name", "sub/x"], ["--name", ""], ["--out", str(BENCH / "run.py")],
    ["--out", str(BENCH / "run.py" / "results")],
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


# The timing options of TINY, for a run whose rows come from --resume.
RESUME = ["--budget", "0.02", "--min-rounds", "3", "--warmup", "0.01", "--block", "0.002", "--quiet", "--no-memory",
          "--no-plots"]


def _saved_run(tmp_path, *extra):
    argv = [a for a in TINY if a != "--no-save"]
    return run.main(["--cell", "gru,rnn", *argv, "--mode", "inference,training", "--no-plots", "--out", str(tmp_path),
                     "--name", "r", *extra])


def test_a_run_stopped_by_its_time_limit_resumes_where_it_stopped(tmp_path):
    """--time-limit saves the rows done as an incomplete record (exit status 3, at least one
    row per run); --resume keeps them as they were, runs the others, and the merged record
    holds every row in the suite's order, once, with both runs named."""
    assert _saved_run(tmp_path, "--time-limit", "1e-6") == 3
    first = report.load(tmp_path / "r.json")
    inc = first["incomplete"]
    assert len(first["rows"]) == inc["done"] == 1 and inc["total"] == 4 and len(inc["left"]) == 3
    assert "Incomplete: 1 of 4 rows" in (tmp_path / "r.md").read_text()

    assert run.main(["--resume", str(tmp_path / "r.json"), *RESUME]) == 0
    merged = report.load(tmp_path / "r.json")
    keys = [r["key"] for r in merged["rows"]]
    assert len(keys) == 4 == len(set(keys)) and "incomplete" not in merged
    assert keys == [c.key() for c in run.suites.custom(
        {"cell": ["gru", "rnn"], "T": [4], "N": [1], "H": [8], "mode": ["inference", "training"], "threads": [1]},
        False)]
    assert merged["rows"][keys.index(first["rows"][0]["key"])] == first["rows"][0]
    assert [p["rows"] for p in merged["parts"]] == [1, 3]
    assert "Merged from 2 runs" in (tmp_path / "r.md").read_text()


def test_check_and_resume_take_the_record_s_options_they_are_not_given(tmp_path, capsys):
    """A rerun of a baseline's rows measures them as the baseline did (its budget, rounds,
    baselines...), and says so; --resume needs no options repeated; an option given still
    counts (and --resume refuses one that differs from the record's)."""
    assert _saved_run(tmp_path, "--baselines", "nn") == 0
    base = report.load(tmp_path / "r.json")
    capsys.readouterr()
    run.main(["--check", str(tmp_path / "r.json"), "--quiet", "--no-plots", "--out", str(tmp_path)])
    assert "note: --check reruns the baseline's rows with its options: budget_s 0.02, min_rounds 3" in \
        capsys.readouterr().err
    rerun = report.load(tmp_path / "custom-check.json")
    assert rerun["options"] == {**base["options"], "argv": rerun["options"]["argv"]}
    names = [{n for r in rec["rows"] for n in r["candidates"]} for rec in (base, rerun)]
    assert names[0] == names[1] and "reference" not in names[1]

    assert _saved_run(tmp_path, "--time-limit", "1e-6") == 3
    assert run.main(["--resume", str(tmp_path / "r.json"), "--quiet"]) == 0
    assert report.load(tmp_path / "r.json")["options"]["budget_s"] == 0.02
    assert _saved_run(tmp_path, "--time-limit", "1e-6") == 3
    with pytest.raises(SystemExit):
        run.main(["--resume", str(tmp_path / "r.json"), "--budget", "0.05"])
    assert "that run had budget_s = 0.02, this one 0.05" in capsys.readouterr().err


@pytest.mark.parametrize("variants, cells", [(["reset_before"], {"gru"}), (["relu", "reset_before"], {"gru", "rnn"}),
                                             (["peephole"], {"lstm"}), (["plain"], {"lstm"}), (None, {"lstm"})])
def test_a_variant_without_a_cell_picks_the_cells_that_have_it(variants, cells):
    rows = run.suites.custom({"variant": variants} if variants else {}, False)
    assert rows and {c.cell for c in rows} == cells
    assert {c.variant for c in rows} == set(variants or ["plain"])


def test_the_baselines_a_row_has_are_those_it_builds():
    """cases.applicable (what --baselines is checked against) and cases.build (what a
    row measures) state one rule twice: every cell and variant, sequence and step."""
    rows = run.suites.custom({"cell": list(run.suites.CELLS), "variant": ["plain", "peephole", "reset_before", "relu"],
                              "T": [2], "N": [1], "H": [4], "mode": ["inference"], "threads": [1]}, False)
    assert {c.cell for c in rows} == set(run.suites.CELLS) and {c.has_nn_twin for c in rows} == {True, False}
    for case in rows:
        built = {c.name for c in run.cases_mod.build(case).candidates} - {"fused"}
        assert run.cases_mod.applicable(case) - {"nn"} == built, case.key()


def test_a_time_limit_without_saving_says_nothing_was_saved(capsys):
    assert run.main(["--cell", "gru,rnn", *TINY, "--time-limit", "1e-6"]) == 3
    err = capsys.readouterr().err
    assert "incomplete: 1 of 2 rows after --time-limit 1e-06 s; nothing saved (--no-save)" in err
    assert "--resume" not in err


def test_check_never_writes_over_its_baseline(tmp_path):
    """Not when the baseline is itself a check's record (<suite>-check.json) in
    the folder the rerun goes to, nor when --name names it."""
    assert _saved_run(tmp_path) == 0
    base = tmp_path / "r.json"
    first = tmp_path / "custom-check.json"  # <suite>-check
    assert run.main(["--check", str(base), *RESUME, "--out", str(tmp_path), "--check-metric", "speedup",
                     "--tolerance", "10"]) == 0
    assert first.exists()
    for extra in ([], ["--name", "custom-check"]):
        before = first.read_bytes()
        assert run.main(["--check", str(first), *RESUME, "--out", str(tmp_path), "--check-metric", "speedup",
                         "--tolerance", "10", *extra]) == 0
        assert first.read_bytes() == before
        assert (tmp_path / "custom-check-check.json").exists()


def test_a_run_without_matplotlib_saves_its_record_without_plots(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    argv = [a for a in TINY if a != "--no-save"]
    assert run.main(["--cell", "gru", *argv, "--out", str(tmp_path), "--name", "r"]) == 0
    assert "matplotlib does not import here: no plots" in capsys.readouterr().err
    rec = report.load(tmp_path / "r.json")
    assert len(rec["rows"]) == 1 and rec["plots"] == [] and "incomplete" not in rec


def test_threads_beyond_the_cores_are_named(tmp_path, monkeypatch, capsys):
    """Oversubscribed rows are run (a user may want them) but said to be incomparable,
    on stderr and in the row's notes."""
    real = run.envinfo.environment
    monkeypatch.setattr(run.envinfo, "usable_cores", lambda: 1)
    monkeypatch.setattr(run.envinfo, "environment",
                        lambda tf32: {**real(tf32), "cpu": {**real(tf32)["cpu"], "cores": 1}})
    argv = [a for a in TINY if a != "--no-save"]
    argv[argv.index("--threads") + 1] = "2"
    assert run.main(["--cell", "gru", *argv, "--no-plots", "--out", str(tmp_path), "--name", "r"]) == 0
    assert "2 threads on 1 usable cores: oversubscribed" in capsys.readouterr().err
    (row,) = report.load(tmp_path / "r.json")["rows"]
    assert "2 threads on 1 usable cores: oversubscribed, not comparable" in row["notes"]


ROW = ["--cell", "gru", "-T", "4", "-N", "1", "-H", "8"]


@pytest.mark.parametrize("argv,words", [
    (["--suite", "quik"], "argument --suite: invalid choice: 'quik'"),
    (["--cell", "lstm_cell", "--layers", "2"], "no rows to run"),
    (["--against", "x.json"], "--against needs --check BASELINE.json"),
    (["--device", "cuda", *ROW], "2 rows need CUDA"),  # inference and training
    (["--baselines", "nn-cudnn,fused-persistent", "--device", "cpu", *ROW],
     "--baselines nn-cudnn,fused-persistent: none of them runs on this run's rows (cpu)"),
    (["--baselines", "nn-onednn,cell-loop", "--cell", "lstm", "--variant", "peephole", "-T", "4", "-N", "1", "-H", "8"],
     "--baselines nn-onednn,cell-loop: none of them runs on this run's rows (cpu; torch.nn has no twin of the "
     "variants)"),
    (["--baselines", "fused-plain", *ROW], "--baselines fused-plain: none of them runs on this run's rows (cpu)"),
], ids=["unknown suite", "no rows", "against alone", "cuda without cuda", "baselines of another device",
        "nn baselines of a variant", "fused-plain of a cell with a twin"])
def test_a_run_that_cannot_start_exits_with_status_2(argv, words, capsys, monkeypatch):
    monkeypatch.setattr(run.torch.cuda, "is_available", lambda: False)  # the same refusals on a GPU machine
    with pytest.raises(SystemExit) as info:
        run.main(argv)
    assert info.value.code == 2
    assert f"bench/run.py: error: {words}" in capsys.readouterr().err


def _case(**kw):
    return run.suites.Case.from_dict({**run.suites.custom({"cell": ["gru"], "T": [4], "N": [1], "H": [8],
                                                           "mode": ["inference"], "threads": [1]}, False)[0].to_dict(),
                                      **kw}).to_dict()


def _damaged(what):
    row = _row("k", 1.0)
    row["case"] = _case()
    rec = _record([row])
    fused = row["candidates"]["fused"]
    if what == "no suite":
        del rec["suite"]
    elif what == "no case":
        del row["case"]
    elif what == "unknown cell":
        row["case"]["cell"] = "bogus"
    elif what == "negative T":
        row["case"]["T"] = -3
    elif what == "zero median":
        fused["median_ms"] = 0.0
    elif what == "NaN median":
        fused["median_ms"] = float("nan")
    elif what == "infinite q3":
        fused["q3_ms"] = float("inf")
    return rec


DAMAGE = {"no suite": "without the name of its suite", "no case": "row k: no well-formed case",
          "unknown cell": "row k: no well-formed case", "negative T": "row k: no well-formed case",
          "zero median": "row k: candidate fused has times that no run measures",
          "NaN median": "row k: candidate fused has times that no run measures",
          "infinite q3": "row k: candidate fused has times that no run measures"}


@pytest.mark.parametrize("what", list(DAMAGE))
def test_a_damaged_record_is_refused_by_check_and_resume(tmp_path, capsys, what):
    """A record that parses but that no run writes (a row without its case, a time of 0 or
    NaN) is refused with exit status 2, where --check would otherwise divide by zero or
    count a NaN as within tolerance, and nothing is written."""
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(_damaged(None)))
    bad.write_text(json.dumps(_damaged(what)))
    report.load(good)
    for argv in (["--check", str(bad), "--against", str(good)], ["--check", str(good), "--against", str(bad)],
                 ["--check", str(bad), "--dry-run"], ["--resume", str(bad), *RESUME]):
        with pytest.raises(SystemExit) as info:
            run.main(argv)
        assert info.value.code == 2
        assert DAMAGE[what] in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "good.json"]


def test_a_baseline_row_without_its_times_is_refused(tmp_path, capsys):
    rec = {"schema": report.SCHEMA, "suite": "quick",
           "rows": [{"key": "k", "case": _case(), "candidates": {"fused": {"median_ms": 1.0}}}]}
    p = tmp_path / "b.json"
    p.write_text(json.dumps(rec))
    with pytest.raises(SystemExit) as info:
        run.main(["--check", str(p), "--against", str(p)])
    assert info.value.code == 2
    assert "row k: candidate fused lacks its times (median_ms, q1_ms, q3_ms)" in capsys.readouterr().err


def test_an_interrupted_run_keeps_its_rows_to_resume(tmp_path, monkeypatch, capsys):
    """Ctrl-C between rows: the rows done are saved as an incomplete record, a line
    says so (no traceback), exit status 130; --resume finishes it."""
    real, calls = run.run_row, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "run_row", interrupted)
    assert _saved_run(tmp_path) == 130
    assert "interrupted; the 1 row done is in" in capsys.readouterr().err
    rec = report.load(tmp_path / "r.json")
    assert len(rec["rows"]) == 1 and rec["incomplete"]["total"] == 4
    monkeypatch.undo()
    assert run.main(["--resume", str(tmp_path / "r.json"), *RESUME]) == 0
    assert len(report.load(tmp_path / "r.json")["rows"]) == 4


def test_resume_reruns_failed_rows_and_refuses_records_it_cannot_extend(tmp_path, capsys):
    assert _saved_run(tmp_path, "--time-limit", "1e-6") == 3
    path = tmp_path / "r.json"
    rec = json.loads(path.read_text())
    broken_key = rec["rows"][0]["key"]
    rec["rows"][0] = {"key": broken_key, "case": rec["rows"][0]["case"], "candidates": {}, "error": "RuntimeError"}
    path.write_text(json.dumps(rec))
    assert run.main(["--resume", str(path), *RESUME]) == 0
    merged = report.load(path)
    assert not any(r.get("error") for r in merged["rows"]) and len(merged["rows"]) == 4

    path.write_text(json.dumps(dict(merged, machine="elsewhere")))
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run.main(["--resume", str(path), *RESUME])
    assert info.value.code == 2 and "one table holds one machine" in capsys.readouterr().err
    path.write_text(json.dumps(merged))
    with pytest.raises(SystemExit) as info:
        run.main(["--resume", str(path), "--suite", "quick", *RESUME])
    assert info.value.code == 2 and "that run is suite custom, this one quick" in capsys.readouterr().err
    for flag, words in ((["--tf32"], "tf32 = False, this one True"), (["--budget", "0.05"], "budget_s = 0.02"),
                        (["--steady-malloc"], "steady_malloc = False")):
        with pytest.raises(SystemExit) as info:
            run.main(["--resume", str(path), *RESUME, *flag])
        assert info.value.code == 2 and words in capsys.readouterr().err
    # Refused before anything is set up: the refused run's torch settings are not left behind.
    import torch

    assert torch.get_float32_matmul_precision() == "highest"


def test_resume_with_cuda_graphs_on_a_cpu_run_is_the_same_run(tmp_path):
    """--cuda-graphs on CPU rows is ignored, in the record too: resuming with the
    same command line continues the run."""
    assert _saved_run(tmp_path, "--time-limit", "1e-6", "--cuda-graphs") == 3
    assert report.load(tmp_path / "r.json")["options"]["cuda_graphs"] is False
    assert run.main(["--resume", str(tmp_path / "r.json"), *RESUME, "--cuda-graphs"]) == 0


def test_resuming_a_complete_record_rerenders_it_unchanged(tmp_path):
    assert _saved_run(tmp_path) == 0
    path = tmp_path / "r.json"
    first = report.load(path)
    assert [p["rows"] for p in first["parts"]] == [4]
    assert run.main(["--resume", str(path), *RESUME]) == 0
    again = report.load(path)
    assert again["rows"] == first["rows"] and again["stamp"] == first["stamp"]
    assert again["parts"] == first["parts"] and not list(tmp_path.glob("*.part"))


def test_a_run_killed_between_rows_leaves_a_record_to_resume(tmp_path, monkeypatch):
    """The record is saved after every row, so a run stopped from outside (a timeout killing
    it) keeps the rows it finished, as an incomplete record --resume completes."""
    real = run.run_row
    calls = []

    class Killed(BaseException):
        """The process dying (nothing in the harness catches it)."""

    def killed_after_one(*args, **kwargs):
        if calls:
            raise Killed
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "run_row", killed_after_one)
    with pytest.raises(Killed):
        _saved_run(tmp_path)
    monkeypatch.undo()
    partial = report.load(tmp_path / "r.json")
    assert len(partial["rows"]) == 1 and partial["incomplete"]["total"] == 4
    assert run.main(["--resume", str(tmp_path / "r.json"), *RESUME]) == 0
    assert len(report.load(tmp_path / "r.json")["rows"]) == 4


def test_resume_writes_the_record_it_resumed(tmp_path):
    """The merged record replaces the file given to --resume, whatever name the record has
    inside, and leaves other records alone; rows saved before parts were named count as one
    earlier run."""
    assert _saved_run(tmp_path, "--time-limit", "1e-6") == 3
    original = (tmp_path / "r.json").read_text()
    rec = json.loads(original)
    for r in rec["rows"]:
        del r["part"]
    del rec["parts"]
    (tmp_path / "copy.json").write_text(json.dumps(rec))
    assert run.main(["--resume", str(tmp_path / "copy.json"), *RESUME]) == 0
    assert (tmp_path / "r.json").read_text() == original
    merged = report.load(tmp_path / "copy.json")
    assert len(merged["rows"]) == 4 and [p["rows"] for p in merged["parts"]] == [1, 3]
    assert [p["id"] for p in merged["parts"]] == [0, 1]


def test_a_clone_benchmarks_its_own_build_over_an_installed_one(tmp_path):
    """`python bench/run.py` in a built clone measures that clone's fusedrnn, not another one
    earlier on the path (an installed or editable fusedrnn of another checkout)."""
    other = tmp_path / "fusedrnn"
    other.mkdir()
    (other / "__init__.py").write_text("raise SystemExit('imported the other fusedrnn')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, str(BENCH / "run.py"), "--list"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "imported the other fusedrnn" not in out.stdout + out.stderr


def test_step_trace_phases():
    """bench/persistent_trace.py's phases of a step from a launch's trace: clocks
    at a rate of 2 ns a cycle (the header's global timer over its clock), two
    steps in the order processed; against the durations written out by hand."""
    import persistent_trace as pt

    record = {"kernel": "lstm_persistent_forward_kernel", "blocks": 96, "units": 8, "tensor_cores": True,
              "header": 4, "points": 4,
              # start ns, clock; end ns, clock: 2000 ns over 1000 cycles
              "values": [5000, 100, 7000, 1100,
                         # step 0: begin, product, units, end; step 1
                         150, 400, 450, 600,
                         610, 800, 900, 1000]}
    ph = pt.phases(record)
    assert ph["product"] == [500.0, 380.0]
    assert ph["units"] == [100.0, 200.0]
    assert ph["barrier"] == [300.0, 200.0]
    assert ph["gap"] == [20.0]
    assert (ph["prologue"], ph["epilogue"], ph["launch"], ph["steps"]) == (100.0, 200.0, 2000.0, 2)
    s = pt.summarize([record, record])["lstm_persistent_forward_kernel"]
    assert (s["launches"], s["steps"], s["blocks"], s["units"]) == (2, 4, 96, 8)
    assert s["median_ns"]["product"] == 440.0 and s["p90_ns"]["product"] == 500.0
    assert s["step_median_ns"] == 840.0  # steps of 900 and 780 ns
    assert s["launch_us"] == 4.0 and s["prologue_us"] == 0.2

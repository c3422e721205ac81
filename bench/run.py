#!/usr/bin/env python3
"""fusedrnn's benchmark harness: fusedrnn against the baselines a user would pick instead,
interleaved in one process. See bench/README.md for the method.

  python bench/run.py                        # the quick suite (about two minutes)
  python bench/run.py --suite cpu            # or gpu, full; --list describes them
  python bench/run.py --cell gru -T 50,200 -N 32 -H 512 --mode training --threads 1
  python bench/run.py --suite quick --cell lstm --mode training     # a suite's rows, filtered
  python bench/run.py --check bench/results/<machine>/quick.json    # rerun a baseline, flag regressions
  python bench/run.py --suite gpu --time-limit 500                   # stop starting rows after 500 s, save
  python bench/run.py --suite gpu --resume bench/results/<machine>/gpu.json   # run the rows it lacks
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import traceback
import warnings
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# The clone this script sits in, once built in place (make bench builds it),
# comes before an installed fusedrnn, which would otherwise be measured instead.
if any((HERE.parent / "fusedrnn" / f"_C{s}").exists() for s in EXTENSION_SUFFIXES):
    sys.path.insert(1, str(HERE.parent))
try:
    import fusedrnn  # noqa: F401
except ImportError:  # a clone not built, and none installed: the clone's error says why
    sys.path.insert(1, str(HERE.parent))
    import fusedrnn  # noqa: F401

import torch

import cases as cases_mod
import envinfo
import plots
import report
import suites
from measure import Runner, Timing, TOLERANCE, activation_bytes, cuda_peak_bytes, measure, output_errors

# Per-suite timing defaults: quick has to finish in about two minutes on a 2-core machine.
TIMING = {
    "quick": Timing(budget_s=0.3, min_rounds=5, warmup_s=0.03, block_s=0.01, cap_s=4.0, secondary_rounds=3),
    "default": Timing(budget_s=1.0, min_rounds=7, warmup_s=0.1, block_s=0.02, cap_s=20.0, secondary_rounds=3),
}


def _ints(s):
    return [int(v) for v in s.split(",") if v]


def _strs(s):
    return [v.strip() for v in s.split(",") if v.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to run")
    g.add_argument("--suite", choices=tuple(suites.SUITES), metavar="SUITE",
                   help="quick (default), cpu, gpu, full; with axis options below, the suite's rows are filtered by "
                        "them. Without --suite, axis options give their cross product")
    g.add_argument("--list", action="store_true", help="describe the suites and the axes, then exit")
    g.add_argument("--dry-run", action="store_true", help="print the rows that would run, then exit")
    g.add_argument("--cell", type=_strs, help=f"comma list of {', '.join(suites.CELLS)}")
    g.add_argument("--variant", type=_strs, help="comma list: plain, peephole, coupled, peephole+coupled (LSTM), "
                                                 "reset_before (GRU), relu (RNN)")
    g.add_argument("-T", type=_ints, help="steps, comma list")
    g.add_argument("-N", type=_ints, help="batch, comma list")
    g.add_argument("-C", type=_ints, help="input size, comma list (default: = H)")
    g.add_argument("-H", type=_ints, help="hidden size, comma list")
    g.add_argument("--layers", type=_ints, help="comma list")
    g.add_argument("--dirs", type=_ints, help="directions, comma list of 1, 2")
    g.add_argument("--dtype", type=_strs, help=f"comma list of {', '.join(suites.DTYPES)}")
    g.add_argument("--device", type=_strs, help="cpu, cuda")
    g.add_argument("--mode", type=_strs, help="comma list of inference, training, forward, backward")
    g.add_argument("--threads", type=_ints, help="CPU threads, comma list (default 1 and all cores)")
    g.add_argument("--baselines", type=_strs,
                   help="comma list of nn, nn-onednn, nn-native, nn-cudnn, cell-loop, reference, fused-plain, "
                        "fused-persistent, fused-standard (default: all that apply)")
    g.add_argument("--limit", type=int, help="run only the first LIMIT rows")
    g.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="start no row after SECONDS of wall time (a row under way finishes); the rows done are "
                        "saved as an incomplete record, exit status 3, and --resume runs the rest")
    g.add_argument("--resume", type=Path, metavar="RUN.json",
                   help="keep the rows of RUN.json (an earlier, possibly incomplete run of the same rows on this "
                        "machine) and run only those it lacks; the merged record, which names every part, is "
                        "saved under RUN.json's name")
    t = p.add_argument_group("timing")
    t.add_argument("--budget", type=float, help="seconds of timed rounds per row (quick 0.3, others 1.0)")
    t.add_argument("--min-rounds", type=int, help="rounds per candidate at least (quick 5, others 7)")
    t.add_argument("--warmup", type=float, help="warm-up seconds per candidate")
    t.add_argument("--block", type=float, help="target seconds of one timed block")
    t.add_argument("--secondary-rounds", type=int,
                   help="rounds for the slow context baselines cell-loop and reference (default 3; 0: every "
                        "round)")
    t.add_argument("--cuda-graphs", action="store_true", help="time CUDA candidates as CUDA-graph replays "
                                                              "(removes launch overhead; not for --mode backward)")
    t.add_argument("--tf32", action="store_true", help="allow TF32 for fp32 matmuls and cuDNN (default off)")
    t.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    t.add_argument("--steady-malloc", action="store_true",
                   help="CPU: make glibc malloc keep freed memory (mallopt: mmap threshold 32 MiB, no trimming), "
                        "so no candidate pays page faults for buffers it reallocates every call, whatever ran "
                        "before it (as with jemalloc/tcmalloc or a long-running process)")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, help="results folder (default bench/results/<machine>)")
    o.add_argument("--name", help="file name stem (default: the suite; 'custom' for custom or filtered runs)")
    o.add_argument("--no-save", action="store_true", help="print the table only")
    o.add_argument("--no-plots", action="store_true")
    o.add_argument("--update-readme", nargs="?", const=HERE.parent / "README.md", type=Path, metavar="README",
                   help="write this run's table and plots into README (default: the top-level README.md) between "
                        "<!-- bench:cpu|gpu:start/end --> markers")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    c = p.add_argument_group("regression check")
    c.add_argument("--check", type=Path, metavar="BASELINE.json",
                   help="compare with a stored run; flags rows whose fused median is worse by more than "
                        "max(spread, --tolerance); exit status 1 if any. Without --suite or axes, reruns the "
                        "baseline's rows")
    c.add_argument("--against", type=Path, metavar="RUN.json",
                   help="with --check: compare two stored runs, run nothing")
    c.add_argument("--check-metric", choices=("time", "speedup"), default="time",
                   help="time: fused medians; speedup: fused / fastest-nn ratio (robust to a slower machine)")
    c.add_argument("--check-candidates", type=_strs, default=["fused"],
                   help="candidates to compare (default fused)")
    c.add_argument("--tolerance", type=float, default=0.05, help="minimum relative tolerance (default 0.05)")
    args = p.parse_args(argv)
    _validate(p, args)
    return args


CANDIDATES = ("fused",) + cases_mod.BASELINE_ORDER


def _validate(p: argparse.ArgumentParser, args) -> None:
    """Rejects what no row could mean, in argparse's words (usage, exit status 2)."""
    named = (("cell", suites.CELLS), ("dtype", suites.DTYPES), ("device", ("cpu", "cuda")), ("mode", suites.MODES),
             ("variant", sorted({v for vs in suites.VARIANTS.values() for v in vs})),
             ("baselines", ("nn",) + cases_mod.BASELINE_ORDER), ("check_candidates", CANDIDATES))
    for name, allowed in named:
        values = getattr(args, name)
        if values is None:
            continue
        flag = "--" + name.replace("_", "-")
        if not values:
            p.error(f"{flag}: an empty list")
        unknown = [v for v in values if v not in allowed]
        if unknown:
            p.error(f"{flag}: unknown {', '.join(unknown)} (choose from {', '.join(allowed)})")
    if args.variant and args.cell:
        fits = {v for c in args.cell for v in suites.VARIANTS[suites.family(c)]}
        if not set(args.variant) & fits:
            p.error(f"--variant {','.join(args.variant)}: none of them is a variant of {','.join(args.cell)}")
    for name, flag in (("T", "-T"), ("N", "-N"), ("C", "-C"), ("H", "-H"), ("layers", "--layers"),
                       ("threads", "--threads")):
        values = getattr(args, name)
        if values is not None and (not values or min(values) < 1):
            p.error(f"{flag}: positive integers, got {values}")
    if args.dirs is not None and (not args.dirs or set(args.dirs) - {1, 2}):
        p.error(f"--dirs: 1 or 2, got {args.dirs}")
    for name, low, strict in (("limit", 1, False), ("min_rounds", 1, False), ("budget", 0, True),
                              ("time_limit", 0, True),
                              ("warmup", 0, False), ("block", 0, False), ("secondary_rounds", 0, False),
                              ("tolerance", 0, False)):
        v = getattr(args, name)
        if v is not None and (v <= low if strict else v < low):
            p.error(f"--{name.replace('_', '-')}: must be {'>' if strict else 'at least'} {low}, got {v}")
    if args.update_readme and args.no_save:
        p.error("--update-readme writes the saved results into the README: not with --no-save")
    if args.resume and args.no_save:
        p.error("--resume saves the merged record: not with --no-save")
    if args.resume and (args.check or args.against):
        p.error("--resume: not with --check or --against (check the finished record instead)")
    if args.resume and (args.limit or any(getattr(args, a) for a in AXES)):
        p.error("--resume runs the rows its record lacks: not with axis options or --limit, which would "
                "drop the record's other rows")
    if args.update_readme and not args.update_readme.parent.is_dir():
        p.error(f"--update-readme: no folder {args.update_readme.parent}")
    if args.name is not None and (not args.name or args.name in (".", "..") or "/" in args.name
                                  or os.sep in args.name):
        p.error(f"--name: a file name stem, without a folder (that is --out), got {args.name!r}")
    if args.out is not None:
        there = next(a for a in (args.out, *args.out.parents) if a.exists() or a == a.parent)
        if there.exists() and not there.is_dir():
            p.error(f"--out: {there} is a file, not a folder")


AXES = ("cell", "variant", "T", "N", "C", "H", "layers", "dirs", "dtype", "device", "mode", "threads")


def list_suites() -> str:
    cuda = torch.cuda.is_available()
    lines = ["suites:"]
    for name, desc in suites.SUITES.items():
        counts = []
        for dev in (("cpu", "cuda") if name == "quick" else (None,)):
            try:
                n = len(suites.suite(name, dev, True))
                counts.append(f"{n} rows" + (f" on {dev}" if dev else "")
                              + (f" ({len(suites.suite(name, dev, False))} without CUDA)" if name == "full" else ""))
            except SystemExit:
                pass
        lines.append(f"  {name:<6} {', '.join(counts)}: {desc}")
    lines.append("")
    lines.append("axes (comma lists): --cell " + ",".join(suites.CELLS))
    for fam, vs in suites.VARIANTS.items():
        lines.append(f"  --variant for {fam}: {','.join(vs)}")
    lines.append("  -T -N -C -H --layers --dirs --dtype " + ",".join(suites.DTYPES) + " --device cpu,cuda "
                 "--mode " + ",".join(suites.MODES) + " --threads")
    lines.append(f"this machine: CUDA {'available' if cuda else 'not available'}; "
                 f"results go to bench/results/{envinfo.machine_name('cuda' if cuda else 'cpu')}/")
    return "\n".join(lines)


class Progress:
    """A plain-text progress bar on stderr (redrawn in place on a terminal, one line per row
    otherwise)."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet = total, quiet
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def update(self, done: int, label: str, result: str = ""):
        if self.quiet:
            return
        el = time.perf_counter() - self.t0
        eta = el / done * (self.total - done) if done else 0
        width = 28
        fill = int(width * done / max(1, self.total))
        bar = "#" * fill + "." * (width - fill)
        msg = f"[{bar}] {done}/{self.total} {_mmss(el)} elapsed, ~{_mmss(eta)} left  {label}"
        if self.tty:
            cols = os.get_terminal_size(sys.stderr.fileno()).columns
            sys.stderr.write("\r" + msg[: cols - 1].ljust(cols - 1))
            sys.stderr.flush()
        elif result:
            sys.stderr.write(msg + "  " + result + "\n")

    def close(self):
        if not self.quiet and self.tty:
            sys.stderr.write("\n")


def _mmss(s):
    return f"{int(s // 60):02d}:{int(s % 60):02d}"


SECONDARY = ("cell-loop", "reference")


def run_row(case: suites.Case, timing: Timing, args) -> dict:
    """Builds, checks, measures and times one row."""
    t0 = time.perf_counter()
    torch.set_num_threads(case.threads)
    out = {"key": case.key(), "case": case.to_dict(), "candidates": {}, "notes": [],
           "load_average": envinfo.load_average()}
    cores = envinfo.usable_cores()
    if case.device == "cpu" and case.threads > cores:
        out["notes"].append(f"{case.threads} threads on {cores} usable cores: oversubscribed, not comparable")
    try:
        row = cases_mod.build(case, set(args.baselines) if args.baselines else None)
        out["notes"] += row.notes
        errs = output_errors(row)
        # With TF32 allowed, float32 products on the GPU carry float16's 10-bit mantissa.
        tf32 = args.tf32 and case.device == "cuda" and case.dtype == "float32"
        tol = TOLERANCE["float16" if tf32 else case.dtype]
        bad = {n: e for n, e in errs.items() if not e <= tol}
        if bad:
            out["mismatch"] = True
            out["notes"].append("output mismatch against fused: " + ", ".join(f"{n} {e:.2e}" for n, e in bad.items()))
        runners = {c.name: Runner(c, row, case.mode, case.device) for c in row.candidates}
        mem = {}
        if not args.no_memory:
            for c in row.candidates:
                if c.name in SECONDARY:  # context baselines: their memory is not the question
                    continue
                m = {}
                if case.mode != "inference":
                    m["act_bytes"] = activation_bytes(c, row)
                if case.device == "cuda":
                    m["peak_bytes"] = cuda_peak_bytes(runners[c.name])
                mem[c.name] = m
        if args.cuda_graphs and case.device == "cuda":
            for r in runners.values():
                why = r.capture_graph()
                if why:
                    out["notes"].append(why)
            out["cuda_graphs"] = True
        stats = measure(runners, timing, secondary=SECONDARY)
        for name, s in stats.items():
            d = s.to_dict()
            d.update(mem.get(name, {}))
            if name in errs:
                d["max_err"] = errs[name]
            out["candidates"][name] = d
    except Exception as e:  # one broken row must not lose a long suite
        out["error"] = f"{type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc(limit=6)
    out["wall_s"] = round(time.perf_counter() - t0, 3)
    return out


def refuse(msg: str):
    """A run that cannot start as asked: the message, exit status 2 (as argparse's errors),
    before anything runs."""
    print(f"bench/run.py: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _load(path: Path) -> dict:
    try:
        return report.load(path)
    except SystemExit as e:
        refuse(str(e))


def main(argv=None) -> int:
    t_main = time.perf_counter()  # --time-limit counts from here: set-up included
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=".*TF32.*")
    if args.list:
        print(list_suites())
        return 0
    if args.against:
        if not args.check:
            refuse("--against needs --check BASELINE.json")
        cmp = report.compare(_load(args.check), _load(args.against), args.check_metric,
                             args.tolerance, args.check_candidates)
        print(check_header(args.check, args.against))
        print(report.check_text(cmp))
        return 1 if report.check_failed(cmp) else 0

    cuda = torch.cuda.is_available()
    axes = {a: getattr(args, a) for a in AXES if getattr(args, a)}
    baseline = _load(args.check) if args.check else None
    previous = _load(args.resume) if args.resume else None
    if previous:
        _adopt_options(args, previous, "--resume")
    elif baseline and not args.suite and not axes:
        _adopt_options(args, baseline, "--check")
    if previous and not args.suite and not axes:
        case_list = suites.dedupe([suites.Case.from_dict(r["case"]) for r in previous["rows"]]
                                  + [suites.Case.from_dict(c) for c in previous.get("incomplete", {}).get("left", [])])
        suite_name = previous["suite"]
        name = previous.get("name", suite_name)
    elif args.suite:
        case_list = suites.filter_cases(suites.suite(args.suite, (axes.get("device") or [None])[0], cuda), axes)
        name = args.suite if not axes else "custom"
        suite_name = args.suite
    elif axes:
        case_list = suites.custom(axes, cuda)
        name = suite_name = "custom"
    elif baseline:
        case_list = suites.dedupe(suites.Case.from_dict(r["case"]) for r in baseline["rows"])
        suite_name = baseline["suite"]
        name = f"{suite_name}-check"
    else:
        case_list = suites.suite("quick", None, cuda)
        name = suite_name = "quick"
    if args.limit:
        case_list = case_list[: args.limit]
        name = "custom" if name == suite_name else name
    if baseline and not name.endswith("-check"):
        name += "-check"  # never overwrite the stored run being checked against
    if previous:
        name = args.resume.stem  # the merged record replaces the one resumed (or goes to --out)
    name = args.name or name
    if not case_list:
        refuse("no rows to run (check the axis options against --list; the single-step cells take one "
               "layer and one direction)")
    if args.dry_run:
        for c in case_list:
            print(c.key())
        print(f"{len(case_list)} row{'s' if len(case_list) != 1 else ''}")
        return 0
    if any(c.device == "cuda" for c in case_list) and not cuda:
        refuse(f"{sum(c.device == 'cuda' for c in case_list)} rows need CUDA, which this torch "
               f"({torch.__version__}) does not see. Use --suite cpu or --device cpu.")

    if args.baselines:
        usable = set().union(*(cases_mod.applicable(c) for c in case_list))
        absent = [b for b in args.baselines if b not in usable]
        rows_are = f"{', '.join(sorted({c.device for c in case_list}))}" + (
            "; torch.nn has no twin of the variants" if not any(c.has_nn_twin for c in case_list) else "")
        if len(absent) == len(args.baselines):
            refuse(f"--baselines {','.join(absent)}: none of them runs on this run's rows ({rows_are})")
        if absent:
            print(f"note: --baselines {','.join(absent)}: none of this run's rows has it ({rows_are}); left out",
                  file=sys.stderr)

    timing = TIMING["quick" if suite_name == "quick" else "default"]
    timing = Timing(**{**timing.__dict__, **{k: v for k, v in (
        ("budget_s", args.budget), ("min_rounds", args.min_rounds), ("warmup_s", args.warmup),
        ("block_s", args.block), ("secondary_rounds", args.secondary_rounds)) if v is not None}})
    device = "cuda" if any(c.device == "cuda" for c in case_list) else "cpu"
    machine = envinfo.machine_name(device)
    env = envinfo.environment(args.tf32)
    if args.cuda_graphs and device != "cuda":
        args.cuda_graphs = False
        print("note: --cuda-graphs: no CUDA rows in this run; ignored", file=sys.stderr)
    kept = resumable_rows(previous, args, timing, env, machine, suite_name, case_list) if previous else {}
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cudnn.benchmark = False
    torch.set_float32_matmul_precision("high" if args.tf32 else "highest")

    if args.steady_malloc:
        why = steady_malloc()
        if why:
            refuse(f"--steady-malloc: {why}")
    env["steady_malloc"] = bool(args.steady_malloc)
    stamp = envinfo.stamp(env, machine)
    to_run = [c for c in case_list if c.key() not in kept]
    print(f"fusedrnn bench: suite {suite_name}, {len(case_list)} rows"
          + (f" ({len(kept)} kept from {args.resume}, {len(to_run)} to run)" if previous else "")
          + f" | {stamp}", file=sys.stderr)
    la = env["load_average_start"]
    if la and la[0] > 0.5 and device == "cpu":
        print(f"note: load average {la[0]} on {env['cpu']['cores']} cores before starting: other work shares "
              f"this machine, multi-threaded rows will be noisy", file=sys.stderr)

    if not (args.no_plots or args.no_save) and not _have_matplotlib():
        args.no_plots = True
        print("note: matplotlib does not import here: no plots (install it, or pass --no-plots)", file=sys.stderr)
    cores = env["cpu"]["cores"]
    over = sorted({c.threads for c in case_list if c.device == "cpu" and c.threads > cores})
    if over:
        print(f"note: {', '.join(map(str, over))} threads on {cores} usable cores: oversubscribed thread teams "
              f"slow torch.nn's OpenMP paths 10-100x, so those rows' speed-ups say nothing (bench/README.md)",
              file=sys.stderr)

    threads0 = torch.get_num_threads()
    progress = Progress(len(to_run), args.quiet)
    new_rows = {}
    t_start = time.perf_counter()
    out_dir = args.out or (args.resume.parent if args.resume else HERE / "results" / machine)
    while baseline and (out_dir / f"{name}.json").resolve() == args.check.resolve():
        name += "-check"  # never over the baseline being checked against
    json_path = out_dir / f"{name}.json"

    earlier = _earlier_parts(previous) if previous else []
    if earlier and earlier[0].get("merged"):
        kept = {k: dict(r, part=0) for k, r in kept.items()}
    part_id = max((p["id"] for p in earlier), default=-1) + 1

    def assemble() -> dict:
        """The record of the rows so far (incomplete while rows are left)."""
        rows = [kept.get(c.key()) or new_rows[c.key()] for c in case_list if c.key() in kept or c.key() in new_rows]
        left = [c for c in to_run if c.key() not in new_rows]
        # Each run that measured rows of this record, with the rows it holds of them
        # (a row names its run by the part's id).
        parts = list(earlier)
        parts.append({"id": part_id, "stamp": stamp, "wall_s": round(time.perf_counter() - t_start, 1)})
        held = collections.Counter(r.get("part", 0) for r in rows)
        parts = [{**{k: v for k, v in p.items() if k != "merged"}, "rows": held[p["id"]]}
                 for p in parts if held.get(p["id"])]
        # A run that measured nothing (resuming a complete record) only re-renders it.
        fresh = bool(new_rows) or not previous
        record = {
            "schema": report.SCHEMA, "suite": suite_name, "name": name, "machine": machine,
            "stamp": stamp if fresh else previous.get("stamp", stamp),
            "env": env if fresh else previous.get("env", env),
            "options": {**timing.__dict__, "cuda_graphs": args.cuda_graphs, "tf32": args.tf32,
                        "steady_malloc": args.steady_malloc, "no_memory": args.no_memory,
                        "baselines": args.baselines, "argv": sys.argv[1:]},
            "wall_s": round(sum(p["wall_s"] for p in parts), 1), "parts": parts, "rows": rows,
        }
        if left:
            record["incomplete"] = {"done": len(rows), "total": len(case_list), "left": [c.to_dict() for c in left]}
        record["summary"] = report.summary(rows)
        return record

    try:
        for i, case in enumerate(to_run):
            # Every run does at least one row, so that resuming always gets further.
            if args.time_limit is not None and i > 0 and time.perf_counter() - t_main >= args.time_limit:
                break
            progress.update(i, _label(case))
            r = run_row(case, timing, args)
            r["part"] = part_id
            new_rows[case.key()] = r
            progress.update(i + 1, _label(case), _row_result(r))
            if not args.no_save and len(new_rows) < len(to_run):
                # A run killed from outside (a time limit of its own) keeps the rows it finished.
                out_dir.mkdir(parents=True, exist_ok=True)
                report.write_json(json_path, assemble())
    except KeyboardInterrupt:
        progress.close()
        torch.set_num_threads(threads0)
        saved = ""
        if new_rows and not args.no_save:
            out_dir.mkdir(parents=True, exist_ok=True)
            report.write_json(json_path, assemble())
            done = f"{len(new_rows)} row{'s' if len(new_rows) > 1 else ''}"
            verb = "are" if len(new_rows) > 1 else "is"
            saved = f"; the {done} done {verb} in {_rel(json_path)} (--resume runs the rest)"
        print(f"\ninterrupted{saved}", file=sys.stderr)
        return 130
    progress.close()
    torch.set_num_threads(threads0)
    env["load_average_end"] = envinfo.load_average()

    record = assemble()
    rows = record["rows"]
    left = record.get("incomplete", {}).get("left", [])

    print()
    print(f"fusedrnn bench | suite {suite_name} | {stamp}")
    print(report.terminal_table(rows))
    print("  xB: speed-up of fused over baseline B (B's median / fused's median; > 1: fused faster). IQR: fused's "
          "(q3-q1)/median.\n  act MB: memory held by autograd after forward. vs nn: fused's IQR against the "
          "fastest torch.nn path's. Method: bench/README.md")
    print()
    print(report.summary_text(record["summary"]))
    for r in rows:
        if r.get("error"):
            print(f"\nerror in {r['key']}:\n{r.get('traceback', r['error'])}", file=sys.stderr)
    print(f"  wall time {record['wall_s']:.0f} s; load average {env['load_average_start']} -> "
          f"{env['load_average_end']}")

    if left:
        after = "the saved record resumes with --resume" if not args.no_save else "nothing saved (--no-save)"
        print(f"  incomplete: {len(rows)} of {len(case_list)} rows after --time-limit {args.time_limit:g} s; "
              f"{after}", file=sys.stderr)
    if not args.no_save:
        out_dir.mkdir(parents=True, exist_ok=True)
        md_path = out_dir / f"{name}.md"
        made = [] if args.no_plots or left else plots.make_all(rows, out_dir, name, record["stamp"])
        record["plots"] = [Path(p).name for p in made]
        report.write_json(json_path, record)
        md_path.write_text(report.markdown_report(record, record["stamp"], made) + "\n")
        print(f"  wrote {_rel(json_path)}, {_rel(md_path)}" + "".join(f", {_rel(Path(p))}" for p in made))
        if args.update_readme:
            report.update_readme(args.update_readme, record, record["stamp"], md_path, made)
            print(f"  updated {_rel(args.update_readme)}")

    failed = False
    if baseline:
        cmp = report.compare(baseline, record, args.check_metric, args.tolerance, args.check_candidates)
        print()
        print(check_header(args.check, None))
        print(report.check_text(cmp))
        failed = report.check_failed(cmp)
    broken = record["summary"]["errors"] + record["summary"]["output_mismatches"]
    if broken:
        print(f"  {len(broken)} rows failed (an error or an output mismatch): exit status 1", file=sys.stderr)
    return 1 if failed or broken else 3 if left else 0


# The options a record keeps (its "options"), by the attribute of args that sets each.
RECORDED_OPTIONS = {"budget": "budget_s", "min_rounds": "min_rounds", "warmup": "warmup_s", "block": "block_s",
                    "secondary_rounds": "secondary_rounds", "baselines": "baselines", "tf32": "tf32",
                    "cuda_graphs": "cuda_graphs", "steady_malloc": "steady_malloc", "no_memory": "no_memory"}


def _adopt_options(args, record: dict, why: str) -> None:
    """The options a run that reruns or extends a record's rows leaves out are the record's,
    so that its rows and the record's were measured alike (options given still count, and
    --resume refuses one that differs from the record's)."""
    opts = record.get("options") or {}
    taken = []
    for attr, key in RECORDED_OPTIONS.items():
        if getattr(args, attr) in (None, False) and opts.get(key) not in (None, False):
            setattr(args, attr, opts[key])
            taken.append(f"{key} {opts[key]}")
    if taken and why == "--check":
        print(f"note: --check reruns the baseline's rows with its options: {', '.join(taken)}", file=sys.stderr)


def _earlier_parts(record: dict) -> list:
    """The runs a resumed record came from, each with the id its rows name. A record whose
    rows do not all name one of its parts (written before parts were) counts as one part, id 0
    ("merged": its kept rows are relabelled so)."""
    parts = record.get("parts") or []
    ids = {p.get("id") for p in parts}
    if parts and None not in ids and all(r.get("part") in ids for r in record["rows"]):
        return [dict(p) for p in parts]
    return [{"id": 0, "stamp": record.get("stamp", "?"), "merged": True,
             "wall_s": round(sum(p.get("wall_s", 0.0) for p in parts) or record.get("wall_s", 0.0), 1)}]


def resumable_rows(previous: dict, args, timing: Timing, env: dict, machine: str, suite_name: str,
                   case_list) -> dict:
    """The rows of the resumed record that this run keeps, by key: those of the planned rows that
    ran without an error (a row that failed runs again). Refuses a record from another machine, or
    measured under other settings, since its rows would then not be comparable with this run's."""
    where = args.resume
    if previous.get("machine") != machine:
        refuse(f"--resume {where}: that run was on {previous.get('machine')}, this machine is {machine}; "
               f"one table holds one machine")
    if previous.get("suite") != suite_name:
        refuse(f"--resume {where}: that run is suite {previous.get('suite')}, this one {suite_name}")
    opts = previous.get("options", {})
    now = {**timing.__dict__, **{k: getattr(args, k) for k in ("tf32", "cuda_graphs", "baselines", "steady_malloc",
                                                                 "no_memory")}}
    for key, value in now.items():
        if opts.get(key, False if key == "no_memory" else None) != value:
            refuse(f"--resume {where}: that run had {key} = {opts.get(key)}, this one {value}; its rows "
                   f"would not be comparable with this run's")
    before, now_env = previous.get("env", {}), env
    for what, get in (("torch", lambda e: e.get("torch")), ("fusedrnn commit", lambda e: e.get("git", {}).get("commit"))):
        if get(before) != get(now_env):
            print(f"note: --resume {where}: its rows ran with {what} {get(before)}, this run's with {get(now_env)}; "
                  f"the record's parts name each", file=sys.stderr)
    planned = {c.key() for c in case_list}
    return {r["key"]: r for r in previous["rows"] if r["key"] in planned and not r.get("error")}


def steady_malloc():
    """glibc only: fixed thresholds (this also turns off glibc's dynamic mmap threshold)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
        return None if ok else "mallopt refused"
    except (OSError, AttributeError) as e:
        return f"not glibc ({e})"


def check_header(base: Path, new) -> str:
    return f"--check against {base}" + (f" (run: {new})" if new else " (run: this one)")


def _label(c: suites.Case) -> str:
    return (f"{c.cell}/{c.variant} {c.shape()} {suites.DTYPE_SHORT[c.dtype]} {c.device} "
            f"{suites.MODE_SHORT[c.mode]} t{c.threads}")


def _row_result(r: dict) -> str:
    if r.get("error"):
        return "ERROR " + r["error"][:80]
    f = r["candidates"].get("fused")
    if not f:
        return ""
    s = f"fused {f['median_ms']:.3g} ms"
    best = report.nn_best(r)
    if best:
        s += f", x{report.speedup(r, best):.2f} vs {best}"
    return s


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


if __name__ == "__main__":
    sys.exit(main())

"""Tables (terminal and markdown), the JSON record, the comparison of --check, and the
README section; plots live in plots.py.

Speed-up of fusedrnn over a baseline = baseline median / fused median (> 1: fused is
faster). "vs nn" compares with the fastest torch.nn path measured in the row (oneDNN or
native ATen on CPU, cuDNN on GPU): ``faster`` when fused's upper quartile is below nn's
lower quartile, ``SLOWER`` when its lower quartile is above nn's upper one, ``tie`` when
the interquartile ranges overlap (the medians still decide the goal count).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from cases import BASELINE_ORDER, NN_NAMES
from suites import CELLS, DTYPE_SHORT, MODE_SHORT, MODES, VARIANTS, Case, family

SCHEMA = "fusedrnn-bench/1"
COLUMN = {"fused-persistent": "persistent", "fused-standard": "standard", "nn-onednn": "oneDNN", "nn-native": "native", "nn-cudnn": "cuDNN", "cell-loop": "cell loop",
          "reference": "reference", "fused-plain": "plain"}


# ---------------------------------------------------------------- derived numbers

def med(row: dict, name: str) -> Optional[float]:
    c = row["candidates"].get(name)
    return c["median_ms"] if c else None


def nn_best(row: dict) -> Optional[str]:
    present = [n for n in NN_NAMES if n in row["candidates"]]
    return min(present, key=lambda n: row["candidates"][n]["median_ms"]) if present else None


def speedup(row: dict, name: str) -> Optional[float]:
    f, b = med(row, "fused"), med(row, name)
    return b / f if f and b else None


def verdict(row: dict) -> Optional[str]:
    best = nn_best(row)
    if best is None or "fused" not in row["candidates"]:
        return None
    f, n = row["candidates"]["fused"], row["candidates"][best]
    if f["q3_ms"] < n["q1_ms"]:
        return "faster"
    if f["q1_ms"] > n["q3_ms"]:
        return "SLOWER"
    return "tie"


def act_mb(row: dict, name: str) -> Optional[float]:
    c = row["candidates"].get(name)
    return None if not c or c.get("act_bytes") is None else c["act_bytes"] / 2**20


def nn_act_mb(row: dict) -> Optional[float]:
    vals = [act_mb(row, n) for n in NN_NAMES if act_mb(row, n) is not None]
    return min(vals) if vals else None


def peak_mb(row: dict, name: str) -> Optional[float]:
    c = row["candidates"].get(name)
    return None if not c or c.get("peak_bytes") is None else c["peak_bytes"] / 2**20


def nn_peak_mb(row: dict) -> Optional[float]:
    vals = [peak_mb(row, n) for n in NN_NAMES if peak_mb(row, n) is not None]
    return min(vals) if vals else None


def sort_key(row: dict):
    c = Case.from_dict(row["case"])
    fam = family(c.cell)
    return (c.device, CELLS.index(c.cell), VARIANTS[fam].index(c.variant), c.dtype, c.N, c.H, c.C, c.L, c.D, c.T,
            MODES.index(c.mode), c.threads)


def baselines_present(rows: Sequence[dict]) -> List[str]:
    seen = {n for r in rows for n in r["candidates"]}
    return [n for n in BASELINE_ORDER if n in seen]


def summary(rows: Sequence[dict]) -> dict:
    """The goal: fused at least as fast as its fastest torch.nn twin (medians), and its
    activation memory at or below nn's."""
    timed = [r for r in rows if nn_best(r) and "fused" in r["candidates"] and not r.get("mismatch")]
    slower = [r for r in timed if speedup(r, nn_best(r)) < 1.0]
    clear_losses = [r for r in timed if verdict(r) == "SLOWER"]
    mem = [r for r in rows if act_mb(r, "fused") is not None and nn_act_mb(r) is not None]
    mem_over = [r for r in mem if act_mb(r, "fused") > nn_act_mb(r) * 1.0001]
    errors = [r for r in rows if r.get("error")]
    faults = [r for r in timed if _faults(r, "fused") - _faults(r, nn_best(r)) >= 5]
    mismatches = [r for r in rows if r.get("mismatch")]
    return {
        "rows": len(rows), "rows_vs_nn": len(timed), "fused_not_slower": len(timed) - len(slower),
        "slower_by_median": [r["key"] for r in slower], "slower_beyond_spread": [r["key"] for r in clear_losses],
        "rows_with_memory": len(mem), "memory_above_nn": [r["key"] for r in mem_over],
        "errors": [r["key"] for r in errors], "output_mismatches": [r["key"] for r in mismatches],
        "geomean_speedup_vs_nn": _geomean([speedup(r, nn_best(r)) for r in timed]),
        "fused_page_faults": {r["key"]: [_faults(r, "fused"), _faults(r, nn_best(r))] for r in faults},
    }


def _faults(row: dict, name: str) -> float:
    c = row["candidates"].get(name) or {}
    return c.get("faults_per_call") or 0.0


def _geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


# ---------------------------------------------------------------- tables

def _ms(x: Optional[float]) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _x(s: Optional[float]) -> str:
    return "-" if s is None else f"{s:.2f}x"


def _table(rows: Sequence[dict], markdown: bool) -> Tuple[List[str], List[List[str]], List[str]]:
    """Header, body, and the fields that are the same in every row (said once above)."""
    cases = [Case.from_dict(r["case"]) for r in rows]
    varying = {f: len({getattr(c, f) for c in cases}) > 1 for f in ("device", "dtype", "threads", "L", "D", "mode")}
    const = []
    if not varying["device"] and cases:
        const.append(f"device {cases[0].device}")
    if not varying["dtype"] and cases:
        const.append(f"dtype {cases[0].dtype}")
    if not varying["threads"] and cases:
        const.append(f"threads {cases[0].threads}")
    base = baselines_present(rows)
    header = ["cell", "variant", "shape"]
    if varying["dtype"]:
        header.append("dtype")
    if varying["device"]:
        header.append("device")
    header += ["mode"] + (["thr"] if varying["threads"] else [])
    header += ["fused ms", "IQR"]
    for b in base:
        if b == "fused-plain":
            header.append("variant/plain")
        elif b in ("fused-persistent", "fused-standard"):
            header.append(f"{COLUMN[b]} ms (x nn)" if markdown else f"{COLUMN[b][:7]} x nn")
        else:
            header.append(f"{COLUMN[b]} ms (x)" if markdown else f"x{COLUMN[b]}")
    has_mem = any(act_mb(r, "fused") is not None for r in rows)
    if has_mem:
        header += ["act MB fused", "act MB nn"]
    has_peak = any(peak_mb(r, "fused") is not None for r in rows)
    if has_peak:
        header += ["peak MB fused", "peak MB nn"]
    header.append("vs nn")
    body = []
    for r, c in zip(rows, cases):
        line = [c.cell, c.variant, c.shape().replace("T=", "T").replace(" N=", " N").replace(" C=", " C")
                .replace(" H=", " H").replace(" L=", " L").replace(" D=", " D")]
        if varying["dtype"]:
            line.append(DTYPE_SHORT[c.dtype])
        if varying["device"]:
            line.append(c.device)
        line.append(MODE_SHORT[c.mode])
        if varying["threads"]:
            line.append(str(c.threads))
        f = r["candidates"].get("fused")
        if r.get("error") and not f:
            body.append(line + ["error: " + r["error"][:60]] + [""] * (len(header) - len(line) - 1))
            continue
        line += [_ms(f["median_ms"]), f"{100 * (f['q3_ms'] - f['q1_ms']) / f['median_ms']:.0f}%"]
        for b in base:
            s = speedup(r, b)
            if b == "fused-plain":
                line.append("-" if s is None else f"{1 / s:.2f}")
            elif b in ("fused-persistent", "fused-standard"):
                # its own speed-up over the fastest torch.nn path of the row
                best = nn_best(r)
                sp = med(r, best) / med(r, b) if best and med(r, b) else None
                cell = f"{_ms(med(r, b))} ({_x(sp)})" if markdown else _x(sp)
                line.append("-" if med(r, b) is None else cell)
            elif markdown:
                line.append("-" if s is None else f"{_ms(med(r, b))} ({_x(s)})")
            else:
                line.append(_x(s))
        if has_mem:
            line += [_mb(act_mb(r, "fused")), _mb(nn_act_mb(r))]
        if has_peak:
            line += [_mb(peak_mb(r, "fused")), _mb(nn_peak_mb(r))]
        v = verdict(r) or "-"
        if r.get("mismatch"):
            v += " MISMATCH"
        line.append(v)
        body.append(line)
    return header, body, const


def _mb(x: Optional[float]) -> str:
    if x is None:
        return "-"
    if 0 < x < 0.1:  # a few KB: four decimals, so that a difference the summary counts shows
        return f"{x:.4f}"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def terminal_table(rows: Sequence[dict]) -> str:
    rows = sorted(rows, key=sort_key)
    header, body, const = _table(rows, markdown=False)
    widths = [max(len(header[i]), *(len(b[i]) for b in body)) if body else len(header[i]) for i in range(len(header))]
    left = {0, 1, 2}
    out = []
    if const:
        out.append("(" + ", ".join(const) + ")")

    def fmt(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out.append(fmt(header))
    out.append("  ".join("-" * w for w in widths))
    prev_group = None
    for r, b in zip(rows, body):
        group = (r["case"]["cell"], r["case"]["variant"])
        if prev_group is not None and group != prev_group:
            out.append("")
        prev_group = group
        out.append(fmt(b))
    return "\n".join(out)


def markdown_table(rows: Sequence[dict]) -> str:
    rows = sorted(rows, key=sort_key)
    header, body, const = _table(rows, markdown=True)
    out = []
    if const:
        out.append("_" + ", ".join(const) + "_\n")
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|")
    for b in body:
        out.append("| " + " | ".join(b) + " |")
    return "\n".join(out)


def summary_text(s: dict, markdown: bool = False) -> str:
    bullet = "- " if markdown else "  "
    lines = []
    if s["rows_vs_nn"]:
        g = s["geomean_speedup_vs_nn"]
        lines.append(f"{bullet}fused at least as fast as the fastest torch.nn path (by median) in "
                     f"{s['fused_not_slower']}/{s['rows_vs_nn']} rows; geometric-mean speed-up {g:.2f}x")
        if s["slower_by_median"]:
            lines.append(f"{bullet}slower than nn in {len(s['slower_by_median'])} rows "
                         f"({len(s['slower_beyond_spread'])} beyond the spread): "
                         + ", ".join(_short(k) for k in s["slower_by_median"]))
    if s["rows_with_memory"]:
        lines.append(f"{bullet}activation memory at or below nn in "
                     f"{s['rows_with_memory'] - len(s['memory_above_nn'])}/{s['rows_with_memory']} training rows"
                     + ("; above in: " + ", ".join(_short(k) for k in s["memory_above_nn"]) if s["memory_above_nn"] else ""))
    if s.get("fused_page_faults"):
        lines.append(f"{bullet}fused takes at least 5 more minor page faults per call than nn in "
                     f"{len(s['fused_page_faults'])} rows (fused/nn per call): "
                     + ", ".join(f"{_short(k)} {a:.0f}/{b:.0f}" for k, (a, b) in s["fused_page_faults"].items()))
    if s["output_mismatches"]:
        lines.append(f"{bullet}OUTPUT MISMATCH against fused in: " + ", ".join(_short(k) for k in s["output_mismatches"]))
    if s["errors"]:
        lines.append(f"{bullet}errors in: " + ", ".join(_short(k) for k in s["errors"]))
    return "\n".join(lines)


def _short(key: str) -> str:
    return key.replace("/float32", "").replace("/L1/D1", "")


# ---------------------------------------------------------------- files

def write_json(path: Path, record: dict) -> None:
    """Atomically: a run killed while saving leaves the previous record whole."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def load(path) -> dict:
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: cannot read a benchmark record: {e}") from None
    if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
        schema = rec.get("schema") if isinstance(rec, dict) else None
        raise SystemExit(f"{path}: not a fusedrnn benchmark record (schema {schema!r})")
    rows = rec.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "key" in r and "candidates" in r for r in rows):
        raise SystemExit(f"{path}: a benchmark record without well-formed rows (each needs 'key' and 'candidates')")
    if not isinstance(rec.get("suite"), str):
        raise SystemExit(f"{path}: a benchmark record without the name of its suite")
    for r in rows:
        try:
            Case.from_dict(r["case"])
        except (KeyError, TypeError, ValueError) as e:
            raise SystemExit(f"{path}: row {r['key']}: no well-formed case ({type(e).__name__}: {e})") from None
        for name, c in r["candidates"].items() if isinstance(r["candidates"], dict) else [(None, None)]:
            if not isinstance(c, dict) or not all(isinstance(c.get(k), (int, float)) for k in _TIMES):
                raise SystemExit(f"{path}: row {r['key']}: candidate {name} lacks its times ({', '.join(_TIMES)})")
            if not (math.isfinite(c["median_ms"]) and c["median_ms"] > 0
                    and all(math.isfinite(c[k]) and c[k] >= 0 for k in _TIMES)):
                raise SystemExit(f"{path}: row {r['key']}: candidate {name} has times that no run measures "
                                 f"({', '.join(f'{k} {c[k]}' for k in _TIMES)})")
    return rec


_TIMES = ("median_ms", "q1_ms", "q3_ms")


def markdown_report(record: dict, stamp_line: str, plots: Sequence[str]) -> str:
    env = record["env"]
    rows = record["rows"]
    opts = record["options"]
    out = [f"# fusedrnn benchmark: `{record['suite']}` on `{record['machine']}`", "", f"**{stamp_line}**", ""]
    out += provenance(record)
    cpu = env["cpu"]
    out.append(f"- CPU: {cpu['name']}" + (f" ({cpu['microarch']})" if cpu["microarch"] else "")
               + f", {cpu['cores']} cores usable, flags {' '.join(cpu['flags'])}; fusedrnn kernel ISA "
               f"{env['backend_info'].get('cpu_isa')}, ATen capability {env['torch_cpu_capability']}"
               + (f"; cell calls take their products from: {env['backend_info']['cpu_single_step_products']}"
                  if "cpu_single_step_products" in env["backend_info"] else ""))
    out.append(f"- torch {env['torch']}, oneDNN {env['onednn']['version']}, Python {env['python']}; "
               f"CPU threads per row as in the `thr` column (or above); load average at start "
               f"{env['load_average_start']}, at end {env.get('load_average_end')}")
    if env.get("cuda"):
        c = env["cuda"]
        out.append(f"- GPU: {c['device']} (sm {c['capability']}, {c['memory_gib']} GiB), CUDA {c['cuda_runtime']}, "
                   f"cuDNN {c['cudnn']}, TF32 {'on' if c['tf32_requested'] else 'off'} for fp32, CUDA graphs "
                   f"{'on' if opts.get('cuda_graphs') else 'off'}")
    out.append(f"- timing: interleaved round-robin blocks, warm-up {opts['warmup_s']} s per candidate, "
               f"at least {opts['min_rounds']} rounds within {opts['budget_s']} s per row; median per call, "
               f"IQR = (q3 - q1) / median of the fused candidate. Wall time {record['wall_s']:.0f} s.")
    out.append("- columns: `xB` / `B ms (x)` = speed-up of fused over baseline B (B's median / fused median); "
               "`variant/plain` = fused variant time / plain fused cell of the same size; `act MB` = bytes held "
               "by the autograd graph after forward (saved tensors, parameters and input excluded); `peak MB` (GPU) "
               "= torch.cuda.max_memory_allocated over one call above what was allocated before it; `vs nn` "
               "compares IQRs with the fastest torch.nn path. Method: [bench/README.md](../../README.md).")
    out.append("")
    out.append("## Summary")
    out.append("")
    out.append(summary_text(summary(rows), markdown=True))
    out.append("")
    for mode in MODES:
        sel = [r for r in rows if r["case"]["mode"] == mode]
        if not sel:
            continue
        out += [f"## {mode}", "", markdown_table(sel), ""]
    notes = sorted({n for r in rows for n in r.get("notes", []) if "no twin" not in n})
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(out)


def provenance(record: dict) -> List[str]:
    """Lines saying which runs a merged record (--resume) came from, and how much of its suite it
    holds when it is incomplete (--time-limit); none for one complete run."""
    out = []
    parts = record.get("parts") or []
    if len(parts) > 1:
        out.append(f"Merged from {len(parts)} runs on this machine (`--resume`); each row was measured within one "
                   "run, its candidates interleaved:")
        out.append("")
        out += [f"- {p['stamp']}: {p['rows']} rows, {p['wall_s']:.0f} s" for p in parts]
        out.append("")
    inc = record.get("incomplete")
    if inc:
        out.append(f"**Incomplete: {inc['done']} of {inc['total']} rows** (stopped at `--time-limit`; "
                   f"`bench/run.py --resume` on this record runs the other {inc['total'] - inc['done']}).")
        out.append("")
    return out


def update_readme(readme: Path, record: dict, stamp_line: str, md_path: Path, plots: Sequence[str]) -> None:
    """Replaces the block between <!-- bench:<kind>:start --> and <!-- bench:<kind>:end -->
    (kind = cpu or gpu) with the summary, the table and the plots of this run."""
    kind = "gpu" if record["machine"].startswith("gpu") else "cpu"
    start, end = f"<!-- bench:{kind}:start -->", f"<!-- bench:{kind}:end -->"
    text = readme.read_text() if readme.exists() else ""
    rel = lambda p: os.path.relpath(p, readme.parent)  # noqa: E731
    body = [start, "", f"**{stamp_line}** (suite `{record['suite']}`; full record: "
            f"[{rel(md_path)}]({rel(md_path)}))", "", *provenance(record),
            summary_text(summary(record["rows"]), markdown=True), ""]
    for mode in ("inference", "training"):
        sel = [r for r in record["rows"] if r["case"]["mode"] == mode]
        if sel:
            body += [f"**{mode}**", "", markdown_table(sel), ""]
    body += [f"![{Path(p).stem}]({rel(p)})" for p in plots] + ["", end]
    block = "\n".join(body)
    # Only markers alone on their line count: prose may quote them.
    pattern = re.compile("^" + re.escape(start) + "$.*?^" + re.escape(end) + "$", flags=re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + f"\n\n## Latest {kind.upper()} results\n\n" + block + "\n"
    readme.write_text(text)


# ---------------------------------------------------------------- --check

def compare(base: dict, new: dict, metric: str = "time", min_tol: float = 0.05,
            candidates: Sequence[str] = ("fused",)) -> dict:
    """Per row present in both records and per candidate: regression when the new median
    is worse than the baseline's by more than max(spread, min_tol), spread being the larger
    relative IQR of the two runs. metric "time" compares medians; "speedup" compares the
    fused/fastest-nn ratio (robust to a machine that is slower as a whole)."""
    old_rows = {r["key"]: r for r in base["rows"]}
    results = []
    # Rows of both runs where this run failed: an error, a candidate the baseline
    # measured and this run did not, or an output that disagrees with fused's.
    failures = []
    skipped = 0
    for r in new["rows"]:
        o = old_rows.get(r["key"])
        if o is None:
            continue
        if r.get("mismatch"):
            failures.append({"key": r["key"], "why": "output mismatch"})
        for name in candidates:
            a, b = o["candidates"].get(name), r["candidates"].get(name)
            if a and not b:
                failures.append({"key": r["key"], "why": f"{name} not measured: {r.get('error') or 'absent'}"})
                continue
            if not a or not b:
                continue
            spread = max((a["q3_ms"] - a["q1_ms"]) / a["median_ms"], (b["q3_ms"] - b["q1_ms"]) / b["median_ms"])
            if metric == "speedup":
                na, nb = nn_best(o), nn_best(r)
                if not na or not nb:
                    skipped += 1
                    continue
                old_v = a["median_ms"] / o["candidates"][na]["median_ms"]
                new_v = b["median_ms"] / r["candidates"][nb]["median_ms"]
                ca, cb = o["candidates"][na], r["candidates"][nb]
                spread += max((ca["q3_ms"] - ca["q1_ms"]) / ca["median_ms"], (cb["q3_ms"] - cb["q1_ms"]) / cb["median_ms"])
            else:
                old_v, new_v = a["median_ms"], b["median_ms"]
            tol = max(spread, min_tol)
            change = new_v / old_v - 1
            status = "REGRESSION" if change > tol else ("improved" if change < -tol else "same")
            drift = None
            nb_name = nn_best(r)
            if nb_name and nb_name in o["candidates"]:
                drift = r["candidates"][nb_name]["median_ms"] / o["candidates"][nb_name]["median_ms"] - 1
            results.append({"key": r["key"], "candidate": name, "old": old_v, "new": new_v, "change": change,
                            "tol": tol, "status": status, "nn_drift": drift})
    new_keys = {r["key"] for r in new["rows"]}
    missing = [k for k in old_rows if k not in new_keys]
    return {"metric": metric, "results": results, "missing": missing, "failures": failures,
            "new_only": [k for k in new_keys if k not in old_rows], "skipped": skipped,
            "machines": (base.get("machine"), new.get("machine")),
            "regressions": [x for x in results if x["status"] == "REGRESSION"]}


def check_failed(cmp: dict) -> bool:
    """A regression, a failure, or nothing compared at all."""
    return bool(cmp["regressions"] or cmp["failures"] or not cmp["results"])


def check_text(cmp: dict, show_all: bool = False) -> str:
    unit = "ms" if cmp["metric"] == "time" else "fused/nn"
    lines = []
    sel = cmp["results"] if show_all else [x for x in cmp["results"] if x["status"] != "same"]
    if sel:
        w = max(len(_short(x["key"])) for x in sel)
        lines.append(f"{'row':<{w}}  {'cand':<6} {'old ' + unit:>12} {'new ' + unit:>12} {'change':>8} {'tol':>6}"
                     f"  {'nn drift':>8}  status")
        for x in sel:
            d = "-" if x["nn_drift"] is None else f"{100 * x['nn_drift']:+.0f}%"
            lines.append(f"{_short(x['key']):<{w}}  {x['candidate']:<6} {x['old']:>12.4g} {x['new']:>12.4g} "
                         f"{100 * x['change']:>+7.1f}% {100 * x['tol']:>5.0f}%  {d:>8}  {x['status']}")
    n_reg = len(cmp["regressions"])
    n_imp = sum(1 for x in cmp["results"] if x["status"] == "improved")
    for f in cmp["failures"]:
        lines.append(f"FAILED {_short(f['key'])}: {f['why']}")
    lines.append(f"check ({cmp['metric']}): {len(cmp['results'])} comparisons, {n_reg} regressions, {n_imp} improved, "
                 f"{len(cmp['results']) - n_reg - n_imp} within tolerance, {len(cmp['failures'])} failed"
                 + (f"; {len(cmp['missing'])} baseline rows not in this run" if cmp["missing"] else "")
                 + (f"; {len(cmp['new_only'])} rows of this run not in the baseline" if cmp["new_only"] else "")
                 + (f"; {cmp['skipped']} rows without a torch.nn baseline not compared" if cmp["skipped"] else ""))
    if not cmp["results"]:
        lines.append("nothing was compared: no row and candidate measured in both runs")
    old_m, new_m = cmp["machines"]
    if old_m != new_m:
        lines.append(f"note: the baseline ran on {old_m}, this run on {new_m}: times from other machines differ "
                     "by the machine (--check-metric speedup compares against torch.nn in each run)")
    if n_reg and cmp["metric"] == "time":
        lines.append("'nn drift' is how much the fastest torch.nn baseline moved in the same rows: a regression "
                     "with a similar drift is the machine, not fusedrnn (try --check-metric speedup).")
    return "\n".join(lines)

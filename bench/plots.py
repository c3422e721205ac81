"""PNG plots of a run (matplotlib, Agg backend): time vs T, speed-up over torch.nn by
shape, and activation memory of training. Each plot carries the run's stamp."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import List, Sequence

from cases import BASELINE_ORDER, NN_NAMES
from report import COLUMN, act_mb, nn_best, sort_key
from suites import DTYPE_SHORT, MODE_SHORT, Case

COLORS = {"fused": "#d62728", "fused-persistent": "#9467bd", "fused-standard": "#8c564b", "nn-onednn": "#1f77b4", "nn-native": "#17becf", "nn-cudnn": "#1f77b4",
          "cell-loop": "#7f7f7f", "reference": "#bcbd22", "fused-plain": "#ff9896"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(c: Case, with_mode=True, with_T=True) -> str:
    s = f"{c.cell}{'' if c.variant == 'plain' else ' ' + c.variant}{f' T{c.T}' if with_T else ''} N{c.N} H{c.H}"
    if c.C != c.H:
        s += f" C{c.C}"
    if c.L != 1 or c.D != 1:
        s += f" L{c.L} D{c.D}"
    s += f" {DTYPE_SHORT[c.dtype]}"
    if c.device == "cpu":
        s += f" {c.threads}thr"
    return s + (f" {MODE_SHORT[c.mode]}" if with_mode else "")


def _plain_ticks(axis):
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def time_vs_T(rows: Sequence[dict], path: Path, stamp: str) -> bool:
    """One panel per group of rows that differ only in T (at least three values of T)."""
    groups = defaultdict(list)
    for r in rows:
        c = Case.from_dict(r["case"])
        if "fused" in r["candidates"]:
            groups[c.key().replace(f"/T{c.T}/", "/T*/")].append((c, r))
    groups = {k: sorted(v, key=lambda cr: cr[0].T) for k, v in groups.items() if len({c.T for c, _ in v}) >= 3}
    if not groups:
        return False
    plt = _plt()
    keys = sorted(groups, key=lambda k: sort_key(groups[k][0][1]))[:12]
    ncol = min(2, len(keys))
    nrow = (len(keys) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.5 * ncol, 4.2 * nrow), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        pts = groups[k]
        names = [n for n in ("fused",) + BASELINE_ORDER if any(n in r["candidates"] for _, r in pts)]
        for n in names:
            xs, ys, lo, hi = [], [], [], []
            for c, r in pts:
                s = r["candidates"].get(n)
                if s:
                    xs.append(c.T)
                    ys.append(s["median_ms"])
                    lo.append(s["median_ms"] - s["q1_ms"])
                    hi.append(s["q3_ms"] - s["median_ms"])
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", ms=4, capsize=2, label=n, color=COLORS.get(n),
                        lw=2.2 if n == "fused" else 1.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_ticks(ax.xaxis)
        _plain_ticks(ax.yaxis)
        ax.set_xlabel("T (steps)")
        ax.set_ylabel("time per call (ms), median and IQR")
        ax.set_title(_label(pts[0][0], with_T=False), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    _title(fig, "time vs T", stamp)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def speedup_by_shape(rows: Sequence[dict], path: Path, stamp: str) -> bool:
    """Horizontal bars: fused's speed-up over the fastest torch.nn path per row (cuDNN on
    GPU), with the range given by the two quartile ranges; one panel per mode."""
    sel = [r for r in rows if nn_best(r) and "fused" in r["candidates"]]
    if not sel:
        return False
    plt = _plt()
    modes = [m for m in ("inference", "training", "forward", "backward") if any(r["case"]["mode"] == m for r in sel)]
    per = {m: sorted([r for r in sel if r["case"]["mode"] == m], key=sort_key) for m in modes}
    height = max(len(v) for v in per.values())
    fig, axes = plt.subplots(1, len(modes), figsize=(6.2 * len(modes), 1.2 + 0.24 * height), squeeze=False)
    for ax, m in zip(axes[0], modes):
        rs = per[m]
        labels, vals, lo, hi, colors = [], [], [], [], []
        for r in rs:
            b = nn_best(r)
            f, n = r["candidates"]["fused"], r["candidates"][b]
            s = n["median_ms"] / f["median_ms"]
            labels.append(_label(Case.from_dict(r["case"]), with_mode=False) + f"  [{COLUMN[b]}]")
            vals.append(s)
            lo.append(max(0.0, s - n["q1_ms"] / f["q3_ms"]))
            hi.append(max(0.0, n["q3_ms"] / f["q1_ms"] - s))
            colors.append("#2ca02c" if s >= 1 else "#d62728")
        y = list(range(len(rs)))[::-1]
        ax.barh(y, vals, xerr=[lo, hi], color=colors, alpha=0.8, capsize=2)
        ax.axvline(1.0, color="k", lw=1)
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_xscale("log")
        _plain_ticks(ax.xaxis)
        ax.set_xlabel("speed-up (x, log scale; > 1: fused faster)")
        ax.tick_params(axis="x", labelsize=8)
        ax.set_title(m)
        ax.grid(True, axis="x", which="both", alpha=0.3)
    _title(fig, "speed-up of fused over the fastest torch.nn path (oneDNN / native ATen on CPU, cuDNN on GPU)", stamp)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def memory(rows: Sequence[dict], path: Path, stamp: str) -> bool:
    """Activation memory of training rows: fused relative to every torch.nn path (< 1: fused
    holds less), with fused's absolute size in the label."""
    sel = sorted([r for r in rows if act_mb(r, "fused") is not None and any(act_mb(r, n) for n in NN_NAMES)],
                 key=sort_key)
    seen, uniq = set(), []
    for r in sel:  # memory does not depend on the thread count
        c = Case.from_dict(r["case"])
        k = c.key().replace(f"/t{c.threads}/", "/").replace(f"/{c.mode}", "")
        if k not in seen:
            seen.add(k)
            uniq.append(r)
    if not uniq:
        return False
    plt = _plt()
    names = [n for n in NN_NAMES if any(act_mb(r, n) for r in uniq)]
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.3 * len(uniq)))
    h = 0.8 / len(names)
    for i, n in enumerate(names):
        ys = [len(uniq) - 1 - j + (len(names) / 2 - i - 0.5) * h for j in range(len(uniq))]
        vals = [act_mb(r, "fused") / act_mb(r, n) if act_mb(r, n) else 0 for r in uniq]
        ax.barh(ys, vals, height=h, label=f"fused / {n}", color=COLORS.get(n))
    ax.axvline(1.0, color="k", lw=1)
    top = max(act_mb(r, "fused") / act_mb(r, n) for r in uniq for n in names if act_mb(r, n))
    ax.set_xlim(0, max(1.6, 1.1 * top))
    ax.set_yticks(range(len(uniq))[::-1])
    labels = []
    for r in uniq:
        lab = _label(Case.from_dict(r["case"]), with_mode=False).replace(f" {r['case']['threads']}thr", "")
        labels.append(f"{lab}  ({act_mb(r, 'fused'):.2g} MiB)")
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("fused / torch.nn activation memory (bytes held by autograd after forward; < 1: fused holds less)",
                  fontsize=8)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, axis="x", alpha=0.3)
    _title(fig, "activation memory of training", stamp)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _title(fig, what: str, stamp: str) -> None:
    parts = stamp.split(" | ")
    half = (len(parts) + 1) // 2
    fig.suptitle(what + "\n" + " | ".join(parts[:half]) + "\n" + " | ".join(parts[half:]), fontsize=8)


def make_all(rows: Sequence[dict], out_dir: Path, prefix: str, stamp: str) -> List[str]:
    made = []
    for name, fn in (("time_vs_T", time_vs_T), ("speedup", speedup_by_shape), ("memory", memory)):
        p = out_dir / f"{prefix}_{name}.png"
        if fn(rows, p, stamp):
            made.append(str(p))
        elif p.exists():
            p.unlink()
    return made

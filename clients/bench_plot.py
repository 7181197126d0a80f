"""``segserve bench --plot``: one figure of four panels from the bench's JSON report.

Latency percentiles against offered load, throughput (and goodput) against
concurrency, the SLO attainment curve (share of requests answered within each
latency target) per level, and each level's share of answers by model. Drawn
with matplotlib's Agg backend (no display needed), from the JSON alone, so a
saved report can be plotted again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _label(level: dict[str, Any]) -> str:
    if level["mode"] == "closed":
        return f"c={level['concurrency']:g}"
    return f"{level['rate']:g}/s"


def _offered(level: dict[str, Any]) -> float:
    """Open loop: the rate asked for; closed loop: the rate it achieved (all it offers)."""
    return float(level["rate"] if level["mode"] == "open" else level["sent"] / level["elapsed_s"])


def plot(report: dict[str, Any], path: str | Path) -> Path:
    """Write the figure for ``report`` (what :func:`clients.bench_cli.run` returns) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    levels: list[dict[str, Any]] = report["levels"]
    figure, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    (latency, throughput), (slo, share) = axes
    title = f"segserve bench: {report['transport']} {report['target']}"
    figure.suptitle(title + (f", model {report['model']}" if report.get("model") else ""))

    colours = dict(zip(("p50", "p90", "p99", "p99.9"), ("C0", "C1", "C2", "C3"), strict=True))
    for mode, style in (("closed", "o-"), ("open", "s--")):
        group = sorted((lv for lv in levels if lv["mode"] == mode), key=_offered)
        if not group:
            continue
        x = [_offered(lv) for lv in group]
        for key, colour in colours.items():
            y = [lv["latency_ms"][key] for lv in group]
            latency.plot(x, [float("nan") if v is None else v for v in y], style, color=colour,
                         label=f"{key} ({mode} loop)")  # fmt: skip
    latency.set(xlabel="offered load (requests/s)", ylabel="latency (ms)", ylim=(0, None))
    latency.set_title("Latency percentiles vs offered load")
    latency.legend(fontsize=7)
    latency.grid(alpha=0.3)

    closed = sorted(
        (lv for lv in levels if lv["mode"] == "closed"), key=lambda lv: lv["concurrency"]
    )
    group, key, xlabel = (closed, "concurrency", "concurrency (requests in flight)")
    if not closed:
        group = sorted((lv for lv in levels if lv["mode"] == "open"), key=_offered)
        key, xlabel = "rate", "offered rate (requests/s)"
    x = [lv[key] for lv in group]
    throughput.plot(x, [lv["throughput_rps"] for lv in group], marker="o", label="throughput")
    throughput.plot(x, [lv["goodput_rps"] for lv in group], marker="^", label="goodput (in budget)")
    if key == "concurrency":
        throughput.set_xscale("log", base=2)
        throughput.set_xticks(x, [f"{c:g}" for c in x])
    throughput.set(xlabel=xlabel, ylabel="answers/s", ylim=(0, None))
    throughput.set_title(f"Throughput vs {key}")
    throughput.legend(fontsize=8)
    throughput.grid(alpha=0.3)

    for lv in levels:
        curve = lv["attainment_curve"]
        slo.plot(curve["targets_ms"], curve["attained"], label=f"{lv['mode']} {_label(lv)}")
    for budget in report["budget_mix"]:
        if budget["budget_ms"] is not None:
            slo.axvline(budget["budget_ms"], color="grey", linestyle="--", linewidth=0.8)
    slo.set(xlabel="latency target (ms); dashed: the mix's budgets", xscale="log")
    slo.set(ylabel="share answered in time", ylim=(0, 1.02))
    slo.xaxis.set_major_formatter(ScalarFormatter())
    slo.xaxis.set_minor_formatter(NullFormatter())
    slo.set_title("SLO attainment")
    slo.legend(fontsize=7)
    slo.grid(alpha=0.3)

    names = sorted({name for lv in levels for name in lv["model_share"]})
    bottoms = [0.0] * len(levels)
    labels = [f"{lv['mode']} {_label(lv)}" for lv in levels]
    for name in names:
        values = [lv["model_share"].get(name, 0.0) for lv in levels]
        share.bar(labels, values, bottom=bottoms, label=name)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    share.set(ylabel="share of answers", ylim=(0, 1.05))
    share.set_title("Answers by model")
    share.tick_params(axis="x", labelrotation=45, labelsize=8)
    if names:
        share.legend(fontsize=8)

    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target

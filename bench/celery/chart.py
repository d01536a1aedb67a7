"""Draw bench/results/latest.png from latest.json (written by bench/compare):
one panel per row, Celery (or BullMQ) beside Celeriac, the Redis ceiling dashed."""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = json.load(open(sys.argv[1]))
fig, axes = plt.subplots(1, len(rows), figsize=(2.6 * len(rows), 4.2))
for ax, r in zip(axes, rows):
    scale, unit = (1, "tasks/s") if r["unit"] == "tasks/s" else (1e3, "ms")
    vals = [r["celery"] * scale, r["celeriac"] * scale]
    # Which system, pool and concurrency, where a row departs from Celery
    # prefork -c 2 / Celeriac 2 slots, fresh instances.
    base = r.get("baseline", "Celery")
    pool = r.get("celery_pool", "prefork -c 2")
    slots = r.get("celeriac_concurrency", 2)
    variant = r.get("celeriac_variant", "fresh")
    custom = base != "Celery" or pool != "prefork -c 2" or slots != 2
    labels = [f"{base}\n{pool}", f"Celeriac\n-c {slots}"] if custom else [base, "Celeriac"]
    if variant != "fresh":
        labels[1] += f"\n{variant}"
    bars = ax.bar(labels, vals, color=["#a6a6a6", "#3b7d3b"])
    for b, v in zip(bars, vals):
        ax.annotate(f"{v:,.0f}" if v >= 100 else f"{v:.2f}", (b.get_x() + b.get_width() / 2, v),
                    ha="center", va="bottom", fontsize=8)
    if r.get("ceiling"):
        ax.axhline(r["ceiling"] * scale, color="#c0392b", ls="--", lw=1, label="Redis ceiling")
    better = "higher" if r["higher_is_better"] else "lower"
    name = r["workload"]
    if base == "Celery" and pool != "prefork -c 2":
        name += f" ({pool.split()[0]})"
    if variant != "fresh":
        name += f", {variant}"
    ax.set_title(f"{name}\n{r['metric']}: {r['advantage']:.1f}×", fontsize=9)
    ax.set_ylabel(f"{unit} ({better} is better)", fontsize=8)
    ax.tick_params(labelsize=8)
    top = max(vals + ([r["ceiling"] * scale] if r.get("ceiling") else []))
    if top / min(vals) > 30:
        # Bars an order of magnitude apart (or a far-off ceiling): log scale.
        ax.set_yscale("log")
        ax.set_ylim(min(vals) / 3, top * 3)
    else:
        ax.set_ylim(0, top * 1.15)
handles = [h for ax in axes for h in ax.get_legend_handles_labels()[0]][:1]
if handles:
    fig.legend(handles, ["Redis ceiling"], loc="lower center", fontsize=8, frameon=False)
fig.suptitle("Celeriac vs Celery (js-short: BullMQ): same Redis, 2 worker slots each (io: as labelled), acks late, results stored", fontsize=10)
fig.tight_layout(rect=(0, 0.04, 1, 1))
fig.savefig(sys.argv[2], dpi=110)

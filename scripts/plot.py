#!/usr/bin/python3
"""Plots of the training benchmarks (issue 6), from the JSON that `ringattn bench` writes.

    scripts/plot.py RUN_DIR [--out DIR]

Reads RUN_DIR/max_context.json (`bench max-context`) and RUN_DIR/throughput.json
(`bench throughput`), whichever exist, and writes PNGs next to them (or into --out):
  max_context.png   longest trainable sequence per implementation, within the memory limit
  memory.png        peak allocator bytes per rank against sequence length, per implementation
  throughput.png    training tokens/s against sequence length, per implementation
Needs matplotlib (Debian: python3-matplotlib, in scripts/install-deps.sh).
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {
    "vanilla": "vanilla",
    "blockwise": "blockwise attention",
    "blockwise_ffn": "blockwise attn + FFN",
    "ring": "ring attention",
}
MIB = 1024.0 * 1024.0


def label(impl, ranks=None):
    text = LABELS.get(impl, impl)
    return f"{text} ({ranks} ranks)" if impl == "ring" and ranks else text


def plot_max_context(data, out):
    results = data["results"]
    names = [label(r["impl"], r["ranks"]) for r in results]
    values = [r["max_seq_len"] for r in results]
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar(names, values, color=["#999999", "#6baed6", "#3182bd", "#e6550d"][: len(values)])
    for b, v in zip(bars, values):
        ax.annotate(f"{v:,}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom")
    limit = data.get("memory_limit_bytes", 0) / MIB
    ax.set_ylabel("max sequence length (tokens)")
    ax.set_title(f"Longest trainable sequence within {limit:.0f} MiB per rank")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def by_impl(rows):
    groups = {}
    for r in rows:
        groups.setdefault((r["impl"], r["ranks"]), []).append(r)
    for g in groups.values():
        g.sort(key=lambda r: r["seq_len"])
    return groups


def plot_series(data, key, scale, ylabel, title, out, limit=None):
    fig, ax = plt.subplots(figsize=(7, 4))
    for (impl, ranks), g in by_impl(data["rows"]).items():
        ax.plot([r["seq_len"] for r in g], [r[key] / scale for r in g], marker="o",
                label=label(impl, ranks))
    if limit:
        ax.axhline(limit / scale, color="red", linestyle="--", linewidth=1, label="memory limit")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--out", help="directory for the PNGs (default: RUN_DIR)")
    a = p.parse_args()
    out = a.out or a.run_dir
    os.makedirs(out, exist_ok=True)
    wrote = []
    mc = os.path.join(a.run_dir, "max_context.json")
    if os.path.exists(mc):
        with open(mc) as f:
            plot_max_context(json.load(f), os.path.join(out, "max_context.png"))
        wrote.append("max_context.png")
    tp = os.path.join(a.run_dir, "throughput.json")
    if os.path.exists(tp):
        with open(tp) as f:
            data = json.load(f)
        plot_series(data, "peak_bytes", MIB, "peak MiB per rank",
                    "Memory per rank against sequence length", os.path.join(out, "memory.png"),
                    limit=data.get("memory_limit_bytes") or None)
        plot_series(data, "tokens_per_s", 1.0, "tokens/s (whole job)",
                    "Training throughput against sequence length",
                    os.path.join(out, "throughput.png"))
        wrote += ["memory.png", "throughput.png"]
    if not wrote:
        sys.exit(f"plot.py: neither max_context.json nor throughput.json in {a.run_dir}")
    print("wrote " + ", ".join(os.path.join(out, w) for w in wrote))


if __name__ == "__main__":
    main()

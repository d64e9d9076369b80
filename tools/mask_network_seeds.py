"""The mask-network experiment repeated with other training seeds: the spread of its figures.

Each work folder is one run of ``tools/mask_network.py`` on the same data and the same
evaluation masks, with its own ``--train-seed`` (the first, seed 0, usually the main run).
For every network and every seed this collects the DevTest and MFR2 figures the report
uses, and the target lines (mask network minus no-mask network), then writes the
per-seed values, their mean and standard deviation.

    python tools/mask_network_seeds.py --runs 0=out/mask_network_1000,1=out/mask_network_seed1,\
2=out/mask_network_seed2 --out docs/results/mask_network/seeds
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.mask_network_report import _load, devtest_summary, mfr2_summary  # noqa: E402

NETWORKS = ("no-mask net", "mask net", "mask net (online)")
#: (column, where, key, shown as percent)
COLUMNS = (("unmasked acc", "devtest", "unmasked_accuracy"),
           ("unmasked TPR@0.1%", "devtest", "unmasked_tpr@far=0.001"),
           ("masked cells mean TPR@0.1%", "devtest", "masked_mean_tpr@far=0.001"),
           ("orig x N95 TPR@0.1%", "devtest", "original_x_N95_tpr@far=0.001"),
           ("masked mean acc", "devtest", "masked_mean_accuracy"),
           ("MFR2 acc", "mfr2", "accuracy"),
           ("MFR2 TPR@0.22%", "mfr2", "tpr@far=0.0022"))
#: the targets of issue 9: (column, mask network - no-mask network must be >= this)
TARGETS = (("masked cells mean TPR@0.1%", 15.0), ("unmasked acc", -1.0), ("MFR2 acc", 0.0),
           ("MFR2 TPR@0.22%", 0.0))


def figures(work: Path, label: str) -> dict[str, float] | None:
    """{column: percent} of one network in one work folder, None when not evaluated."""
    dev, mfr = _load(work, label, "devtest"), _load(work, label, "mfr2")
    if dev is None or mfr is None:
        return None
    src = {"devtest": devtest_summary(dev), "mfr2": mfr2_summary(mfr)}
    out = {}
    for col, where, key in COLUMNS:
        v = src[where].get(key)
        out[col] = float("nan") if v is None else 100.0 * float(v)
    return out


def _mean_sd(values: list[float]) -> tuple[float, float]:
    a = np.array(values, np.float64)
    a = a[np.isfinite(a)]
    if not len(a):
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def collect(runs: dict[int, Path]) -> dict:
    per = {net: {seed: figures(work, net) for seed, work in runs.items()} for net in NETWORKS}
    per = {net: {s: f for s, f in by.items() if f is not None} for net, by in per.items()}
    summary: dict = {"runs": {str(s): str(w) for s, w in runs.items()}, "networks": {}, "targets": {}}
    for net, by in per.items():
        if not by:
            continue
        summary["networks"][net] = {
            "seeds": sorted(by),
            "per_seed": {str(s): {c: round(v, 2) for c, v in f.items()} for s, f in sorted(by.items())},
            "mean_sd": {c: [round(x, 2) for x in _mean_sd([f[c] for f in by.values()])] for c, *_ in COLUMNS}}
    base = per["no-mask net"]
    for net in NETWORKS[1:]:
        seeds = sorted(set(base) & set(per[net]))
        if not seeds:
            continue
        lines = {}
        for col, target in TARGETS:
            diffs = [per[net][s][col] - base[s][col] for s in seeds]
            m, sd = _mean_sd(diffs)
            lines[col] = {"target": target, "per_seed": [round(d, 2) for d in diffs], "mean": round(m, 2),
                          "sd": round(sd, 2), "met_by_seeds": int(sum(d >= target for d in diffs)),
                          "met_by_mean": bool(m >= target)}
        summary["targets"][net] = {"seeds": seeds, "lines": lines}
    return summary


def markdown(s: dict) -> str:
    out = ["| network | seeds | " + " | ".join(c for c, *_ in COLUMNS) + " |",
           "|---|---|" + "---:|" * len(COLUMNS)]
    for net, d in s["networks"].items():
        cells = [f"{m:.1f} ± {sd:.1f}" for m, sd in (d["mean_sd"][c] for c, *_ in COLUMNS)]
        out.append(f"| {net} | {', '.join(map(str, d['seeds']))} | " + " | ".join(cells) + " |")
    out += ["", "Per seed:", "", "| network | seed | " + " | ".join(c for c, *_ in COLUMNS) + " |",
            "|---|---:|" + "---:|" * len(COLUMNS)]
    for net, d in s["networks"].items():
        for seed, f in d["per_seed"].items():
            out.append(f"| {net} | {seed} | " + " | ".join(f"{f[c]:.1f}" for c, *_ in COLUMNS) + " |")
    out += ["", "Targets (mask network minus the no-mask network of the same seed):", "",
            "| network | line | target | per seed | mean ± sd | met by |", "|---|---|---:|---|---:|---|"]
    for net, t in s["targets"].items():
        for col, ln in t["lines"].items():
            out.append(f"| {net} | {col} | ≥ {ln['target']:+.0f} | "
                       f"{', '.join(f'{d:+.1f}' for d in ln['per_seed'])} | {ln['mean']:+.1f} ± {ln['sd']:.1f} | "
                       f"{ln['met_by_seeds']} of {len(t['seeds'])} seeds{', mean' if ln['met_by_mean'] else ''} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="comma list of SEED=WORK_FOLDER")
    p.add_argument("--out", default="", help="folder for seeds.json and seeds.md (default: print)")
    args = p.parse_args(argv)
    runs = {}
    for item in filter(None, args.runs.split(",")):
        seed, _, work = item.partition("=")
        if not work:
            p.error(f"--runs: {item!r} is not SEED=FOLDER")
        runs[int(seed)] = Path(work)
    s = collect(runs)
    md = markdown(s)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "seeds.json").write_text(json.dumps(s, indent=1))
        (out / "seeds.md").write_text(md)
    print(md)
    return s


if __name__ == "__main__":
    main()

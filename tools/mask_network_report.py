"""The mask-network experiment's report: figures, summary.json and report.md from the
evaluation folders that ``tools/mask_network.py`` fills (also usable on its own).

    python tools/mask_network_report.py --work out/mask_network

Targets (issue 9, on the masked cells of the DevTest grid): the mask network's mean
TPR@FAR=0.1 % at least 15 points above the no-mask network's; its unmasked x unmasked max
accuracy at most 1 point below; on MFR2 a higher max accuracy and TPR@FAR=0.22 %.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("dlib", "no-mask net", "mask net", "mask net (online)", "no-mask net (scratch)",
          "mask net (online, scratch)")
ONLINE = "mask net (online)"
#: (no-mask network, mask network) compared against the targets, each pair trained alike
PAIRS = (("no-mask net", "mask net"), ("no-mask net", ONLINE),
         ("no-mask net (scratch)", "mask net (online, scratch)"))
TPR = "tpr@far=0.001"


def _f(x) -> float:
    """A metric value (None / NaN when undefined) -> float."""
    return float("nan") if x is None else float(x)


def _load(work: Path, label: str, which: str) -> dict | None:
    p = work / "eval" / label / which / "metrics.json"
    return json.loads(p.read_text()) if p.is_file() else None


def masked_cells(m: dict, key: str) -> dict[str, float]:
    """{template|probe: value} of every cell where at least one side wears a mask."""
    names, grid = m["variants"], m["grids"][key]
    return {f"{t}|{p}": grid[i][j] for i, t in enumerate(names) for j, p in enumerate(names)
            if not (t == "original" and p == "original") and grid[i][j] is not None}


def _nanmean(values) -> float:
    a = np.array([_f(v) for v in values], np.float64)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def devtest_summary(m: dict) -> dict[str, float]:
    names = m["variants"]
    o = names.index("original")
    acc, tpr = m["grids"]["accuracy"], m["grids"][TPR]
    mc_tpr = masked_cells(m, TPR)
    mc_acc = masked_cells(m, "accuracy")
    return {"unmasked_accuracy": acc[o][o], "unmasked_tpr@far=0.001": tpr[o][o],
            "masked_mean_tpr@far=0.001": _nanmean(mc_tpr.values()),
            "masked_mean_accuracy": _nanmean(mc_acc.values()),
            "original_x_N95_tpr@far=0.001": tpr[o][names.index("N95")] if "N95" in names else None}


def mfr2_summary(m: dict) -> dict[str, float]:
    c = m["cells"]["original"]["original"]
    return {"accuracy": c["accuracy"], "tpr@far=0.0022": c.get("tpr@far=0.0022"),
            "acc@far=0.0022": c.get("acc@far=0.0022"), "tpr@far=0.001": c.get(TPR)}


def _figures(dev: dict, mfr: dict, out: Path) -> list[str]:
    from facenet import report
    names = []
    for label, m in dev.items():
        if m is None:
            continue
        slug = label.replace(" ", "_").replace("-", "").replace("(", "").replace(")", "").replace(",", "")
        for key, title in ((TPR, "TPR@FAR=0.1%"), ("accuracy", "max accuracy")):
            f = f"heatmap_{slug}_{key.split('@')[0]}.png"
            (out / f).write_bytes(report.heatmap_png(m["grids"][key], m["variants"], f"{label}: {title} (LFW DevTest)"))
            names.append(f)
    if dev.get("mask net") and dev.get("no-mask net"):
        a, b = dev["mask net"], dev["no-mask net"]
        diff = (np.array([[_f(v) for v in r] for r in a["grids"][TPR]])
                - np.array([[_f(v) for v in r] for r in b["grids"][TPR]])).tolist()
        (out / "heatmap_difference_tpr.png").write_bytes(report.heatmap_png(
            diff, a["variants"], "mask net − no-mask net: TPR@FAR=0.1%", vmin=-0.5, vmax=0.5))
        names.append("heatmap_difference_tpr.png")
    series = {}
    for label in MODELS:
        s = {}
        if dev.get(label):
            s.update({f"LFW {k}": v for k, v in report.bar_conditions(dev[label]).items()})
        if mfr.get(label):
            s["MFR2 (real masks)"] = mfr[label]["cells"]["original"]["original"]["accuracy"]
        if s:
            series[label] = s
    if series:
        (out / "bars_accuracy.png").write_bytes(report.bar_png(series, "max accuracy: LFW-SM DevTest and MFR2"))
        names.append("bars_accuracy.png")
    curves = {}
    for label in MODELS:
        m = dev.get(label)
        if m and "original|N95" in m["roc"]:
            curves[f"{label}: original × N95"] = m["roc"]["original|N95"]
        if mfr.get(label):
            curves[f"{label}: MFR2"] = mfr[label]["roc"]["original|original"]
    if curves:
        (out / "roc.png").write_bytes(report.roc_png(curves, "ROC: unmasked template × N95 probe, and MFR2", (1e-3,)))
        names.append("roc.png")
    return names


def _targets(s: dict) -> list[str]:
    d, m = s["devtest"], s["mfr2"]
    lines = []
    key = "masked_mean_tpr@far=0.001"
    for base, net in PAIRS:
        if net not in d or base not in d:
            continue
        gain = 100 * (_f(d[net][key]) - _f(d[base][key]))
        drop = 100 * (_f(d[base]["unmasked_accuracy"]) - _f(d[net]["unmasked_accuracy"]))
        lines.append(f"* {net} vs {base}: masked cells, mean TPR@FAR=0.1 % {gain:+.1f} points "
                     f"(target ≥ +15): **{'met' if gain >= 15 else 'missed'}**; unmasked × unmasked max accuracy "
                     f"{drop:+.1f} points below (target ≤ 1): **{'met' if drop <= 1 else 'missed'}**")
        if net in m and base in m:
            da = 100 * (_f(m[net]["accuracy"]) - _f(m[base]["accuracy"]))
            dt = 100 * (_f(m[net]["tpr@far=0.0022"]) - _f(m[base]["tpr@far=0.0022"]))
            ok = da > 0 and dt > 0
            lines.append(f"  * MFR2: max accuracy {da:+.1f} points, TPR@FAR=0.22 % {dt:+.1f} points "
                         f"(target: both higher): **{'met' if ok else 'missed'}**")
    if ONLINE in d and "mask net" in d:
        diff = 100 * (_f(d[ONLINE][key]) - _f(d["mask net"][key]))
        mdiff = (100 * (_f(m[ONLINE]["accuracy"]) - _f(m["mask net"]["accuracy"]))
                 if ONLINE in m and "mask net" in m else float("nan"))
        winner = "online" if diff > 0 else "offline"
        lines.append(f"* online vs offline masks: masked cells mean TPR@FAR=0.1 % online − offline = {diff:+.1f} "
                     f"points, MFR2 max accuracy {mdiff:+.1f} points: **{winner} wins on the masked cells**")
    return lines


def _table(s: dict) -> list[str]:
    rows = ["| network | LFW DevTest unmasked acc | unmasked TPR@0.1% | masked cells mean TPR@0.1% "
            "| orig × N95 TPR@0.1% | masked mean acc | MFR2 acc | MFR2 TPR@0.22% |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def pct(x):
        return "–" if x is None or not np.isfinite(_f(x)) else f"{100 * _f(x):.1f}"
    for label in MODELS:
        d, m = s["devtest"].get(label, {}), s["mfr2"].get(label, {})
        rows.append(f"| {label} | {pct(d.get('unmasked_accuracy'))} | {pct(d.get('unmasked_tpr@far=0.001'))} | "
                    f"{pct(d.get('masked_mean_tpr@far=0.001'))} | {pct(d.get('original_x_N95_tpr@far=0.001'))} | "
                    f"{pct(d.get('masked_mean_accuracy'))} | {pct(m.get('accuracy'))} | "
                    f"{pct(m.get('tpr@far=0.0022'))} |")
    return rows


def write_report(work: Path, out: Path, settings: dict | None = None, times: dict | None = None) -> dict:
    """Figures + summary.json + report.md in ``out`` from ``work``'s evaluations; -> summary."""
    out.mkdir(parents=True, exist_ok=True)
    dev = {label: _load(work, label, "devtest") for label in MODELS}
    mfr = {label: _load(work, label, "mfr2") for label in MODELS}
    training = {}
    for which in ("nomask", "mask", "online", "nomask_scratch", "online_scratch"):
        p = work / "train" / f"{which}_net" / "metrics.jsonl"
        if p.is_file():
            training[which] = [json.loads(line) for line in p.read_text().splitlines()]
    s = {"settings": settings or {}, "seconds": times or {},
         "devtest": {k: devtest_summary(v) for k, v in dev.items() if v},
         "mfr2": {k: mfr2_summary(v) for k, v in mfr.items() if v},
         "training": training}
    s["figures"] = _figures(dev, mfr, out)
    (out / "summary.json").write_text(json.dumps(s, indent=1, default=str))
    for label, m in dev.items():
        if m:
            slug = label.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
            (out / f"devtest_{slug}.json").write_text(json.dumps(
                {k: m[k] for k in ("model", "variants", "grids", "n_pairs", "status_counts")}, indent=1))
    lines = ["# The mask network on LFW-SM DevTest and MFR2", "",
             "Produced by `python tools/mask_network.py` (settings and wall times in `summary.json`).", "",
             *_table(s), "", "## Targets", "", *_targets(s), "",
             "## Figures", "", *[f"![{f}]({f})" for f in s["figures"]], ""]
    (out / "report.md").write_text("\n".join(lines))
    return s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "out" / "mask_network"))
    p.add_argument("--output", default=str(ROOT / "docs" / "results" / "mask_network"))
    a = p.parse_args()
    times = Path(a.work) / "times.json"
    write_report(Path(a.work), Path(a.output), None, json.loads(times.read_text()) if times.exists() else None)


if __name__ == "__main__":
    main()

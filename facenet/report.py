"""Pictures and reports of verification results (matplotlib, Agg backend, no display).

Everything here takes a :class:`facenet.verify.VerificationMetrics` dict (the format
:func:`facenet.verify.compute_metrics` builds and ``metrics.json`` holds; plain JSON values)
and returns bytes or text; writing them anywhere (local, s3://) is the caller's business.

* :func:`heatmap_png` - a template-variant x probe-variant grid with annotated values (the
  paper's 5x5 tables as pictures).
* :func:`roc_png` - ROC curves (TPR against FAR, log FAR axis), FAR targets marked.
* :func:`bar_png` - no-mask vs masked conditions, one bar series per model (paper Fig. 4).
* :func:`cluster_png` - 2-D PCA of embeddings coloured by identity and by found cluster
  (paper Fig. 5).
* :func:`make_figures`, :func:`render_markdown`, :func:`render_html`.
"""
from __future__ import annotations

import html
import io
import math
from typing import Any, Mapping, Sequence

import numpy as np

from facenet.verify import VerificationMetrics, far_labels


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _pct(x: Any, digits: int = 1) -> str:
    v = _num(x)
    return "–" if math.isnan(v) else f"{100 * v:.{digits}f}"


# ------------------------------------------------------------------------------------------ figures

def heatmap_png(grid: Sequence[Sequence[Any]], labels: Sequence[str], title: str,
                vmin: float = 0.0, vmax: float = 1.0, percent: bool = True) -> bytes:
    """(V,V) values (rows: template variant, columns: probe variant) -> PNG bytes."""
    plt = _plt()
    a = np.array([[_num(v) for v in row] for row in grid], np.float64)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.1 * n + 2.2, 0.9 * n + 1.6))
    im = ax.imshow(np.ma.masked_invalid(a), cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(n), labels, rotation=30, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("probe")
    ax.set_ylabel("template")
    ax.set_title(title)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            v = a[i, j]
            text = "–" if math.isnan(v) else (f"{100 * v:.1f}" if percent else f"{v:.3g}")
            bright = not math.isnan(v) and (v - vmin) / max(vmax - vmin, 1e-12) > 0.6
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="black" if bright else "white")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if percent:
        from matplotlib.ticker import PercentFormatter
        cbar.ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    return _png(fig)


def roc_png(curves: Mapping[str, Mapping[str, Sequence[float]]], title: str,
            far_targets: Sequence[float] = ()) -> bytes:
    """``{label: {"far": [...], "tpr": [...]}}`` -> PNG of ROC curves on a log FAR axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for label, c in curves.items():
        far = np.asarray(c["far"], np.float64)
        tpr = np.asarray(c["tpr"], np.float64)
        keep = far > 0
        ax.plot(far[keep], tpr[keep], label=label, lw=1.5)
    for t in far_targets:
        ax.axvline(t, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("FAR = FP / (FP + TN)")
    ax.set_ylabel("TPR")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def bar_png(series: Mapping[str, Mapping[str, Any]], title: str, ylabel: str = "accuracy (%)",
            ylim: tuple[float, float] = (50.0, 100.0)) -> bytes:
    """``{model: {condition: value in [0,1]}}`` -> grouped bar chart PNG (paper Fig. 4)."""
    plt = _plt()
    cats = list(dict.fromkeys(c for s in series.values() for c in s))
    k = max(len(series), 1)
    width = 0.8 / k
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cats) + 2), 4.4))
    x = np.arange(len(cats))
    for i, (name, vals) in enumerate(series.items()):
        v = np.array([100 * _num(vals.get(c)) for c in cats])
        bars = ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(v, nan=0.0), width, label=name)
        for b, val in zip(bars, v):
            if not math.isnan(val):
                ax.text(b.get_x() + b.get_width() / 2, max(val, ylim[0]) + 0.3, f"{val:.1f}",
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, cats, rotation=25, ha="right")
    ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=max(len(series), 1), frameon=False)
    ax.grid(True, axis="y", alpha=0.3)
    return _png(fig)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """float (N,D) -> float (N,2) projection on the first two principal axes."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def cluster_png(emb: np.ndarray, identities: Sequence[str], labels: Sequence[int], title: str,
                top: int = 25) -> bytes:
    """Embeddings float (N,D) + true identities + found cluster labels (-1 = not clustered)
    -> left: 2-D PCA coloured by found cluster; right: the composition of the ``top``
    largest clusters, one stacked bar per cluster, one colour per true identity (a pure
    cluster is a single-colour bar; one identity spread over several bars was split)."""
    plt = _plt()
    emb = np.asarray(emb, np.float64)
    labels = np.asarray(labels)
    ids = np.asarray(list(identities))
    ok = np.isfinite(emb).all(1) & (labels >= 0)
    xy = pca_2d(emb[ok]) if ok.sum() >= 2 else np.zeros((int(ok.sum()), 2))
    lab, ids = labels[ok], ids[ok]
    names, id_codes = np.unique(ids, return_inverse=True)
    cmap = plt.get_cmap("tab20")
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1, 1.4]})
    a0.scatter(xy[:, 0], xy[:, 1], c=[cmap(int(c) % 20) for c in lab], s=14, edgecolors="k", linewidths=0.2)
    a0.set_title(f"PCA of the embeddings, coloured by cluster ({len(np.unique(lab))})")
    a0.set_xticks([])
    a0.set_yticks([])
    clusters, sizes = np.unique(lab, return_counts=True)
    order = clusters[np.argsort(-sizes, kind="stable")][:top]
    for x, c in enumerate(order):
        members, counts = np.unique(id_codes[lab == c], return_counts=True)
        bottom = 0
        for m, n in sorted(zip(members, counts), key=lambda t: -t[1]):
            a1.bar(x, n, bottom=bottom, color=cmap(int(m) % 20), edgecolor="k", linewidth=0.3)
            if n >= 3:
                a1.text(x, bottom + n / 2, names[m][:10], ha="center", va="center", fontsize=5, rotation=90)
            bottom += n
    a1.set_xticks(range(len(order)), [str(i + 1) for i in range(len(order))], fontsize=7)
    a1.set_xlabel(f"the {len(order)} largest clusters")
    a1.set_ylabel("images (stacked by true identity)")
    a1.set_title("cluster composition")
    fig.suptitle(title)
    return _png(fig)


# ------------------------------------------------------------------------------------------ assembly

def _far_labels(metrics: VerificationMetrics) -> list[str]:
    return far_labels(metrics.get("far_targets", []))


def heatmap_specs(metrics: VerificationMetrics) -> list[tuple[str, str, str, float, float]]:
    """(file name, grid key, title, vmin, vmax) of every heatmap a metrics dict has."""
    out = [("heatmap_accuracy.png", "accuracy", "max accuracy (fold-validated), %", 0.5, 1.0)]
    for lab in _far_labels(metrics):
        out.append((f"heatmap_acc_far{lab}.png", f"acc@far={lab}", f"ACC@FAR={lab}, %", 0.5, 1.0))
        out.append((f"heatmap_tpr_far{lab}.png", f"tpr@far={lab}", f"TPR@FAR={lab}, %", 0.0, 1.0))
    out.append(("heatmap_fixed_threshold_accuracy.png", "fixed_threshold_accuracy",
                "accuracy at the unmasked threshold, %", 0.5, 1.0))
    return [s for s in out if s[1] in metrics.get("grids", {})]


def make_figures(metrics: VerificationMetrics, compare: VerificationMetrics | None = None,
                 clusters: Mapping[str, Any] | None = None) -> dict[str, bytes]:
    """Every picture of a report -> ``{file name: PNG bytes}``.

    ``compare``: the metrics of a second model (the bar chart then has two series, the
    paper's no-mask vs mask network); ``clusters``: ``{"embeddings", "identities", "labels"}``.
    """
    labels = list(metrics["variants"])
    model = metrics.get("model", "model")
    figs: dict[str, bytes] = {}
    for name, key, title, vmin, vmax in heatmap_specs(metrics):
        figs[name] = heatmap_png(metrics["grids"][key], labels, f"{model}: {title}", vmin, vmax)
    fars = [float(t) for t in metrics.get("far_targets", [])]
    base = labels[0]
    cross = {k.replace("|", " × "): v for k, v in metrics.get("roc", {}).items() if k.startswith(base + "|")}
    if cross:
        figs["roc_template_original.png"] = roc_png(cross, f"{model}: template {base}, probe varies", fars)
    same = {k.replace("|", " × "): v for k, v in metrics.get("roc", {}).items()
            if k.split("|")[0] == k.split("|")[-1]}
    if len(same) > 1:
        figs["roc_same_variant.png"] = roc_png(same, f"{model}: both sides the same variant", fars)
    series = {model: bar_conditions(metrics)}
    if compare is not None:
        series[compare.get("model", "compare")] = bar_conditions(compare)
    figs["bar_nomask_vs_mask.png"] = bar_png(series, "max accuracy: unmasked vs masked probes")
    if clusters is not None and metrics.get("clustering"):
        c = metrics["clustering"]
        figs["clusters.png"] = cluster_png(
            clusters["embeddings"], clusters["identities"], clusters["labels"],
            f"{model}: {c['n_clusters']} clusters of {c['n_identities']} identities "
            f"(purity {c['purity']:.3f}, NMI {c['nmi']:.3f})")
    return figs


def bar_conditions(metrics: VerificationMetrics, metric: str = "accuracy") -> dict[str, float]:
    """The bar chart's conditions: template unmasked x every probe variant, then each masked
    variant on both sides."""
    labels = list(metrics["variants"])
    g = metrics["grids"][metric]
    base = labels[0]
    out = {f"{base} × {p}": g[0][j] for j, p in enumerate(labels)}
    for i, t in enumerate(labels[1:], 1):
        out[f"{t} × {t}"] = g[i][i]
    return out


def _grid_table_md(metrics: VerificationMetrics, key: str) -> str:
    labels = list(metrics["variants"])
    g = metrics["grids"][key]
    head = "| template \\ probe | " + " | ".join(labels) + " |"
    sep = "|---|" + "---:|" * len(labels)
    rows = [f"| {t} | " + " | ".join(_pct(v) for v in g[i]) + " |" for i, t in enumerate(labels)]
    return "\n".join([head, sep, *rows])


def _summary_rows(metrics: VerificationMetrics) -> list[tuple[str, str]]:
    fl = _far_labels(metrics)
    b = metrics["cells"][metrics["variants"][0]][metrics["variants"][0]]
    rows = [("pairs", f"{metrics['n_pairs']} ({metrics['n_same']} same), {metrics['n_images']} images, "
                      f"folds {','.join(str(f + 1) for f in metrics.get('folds_used', []))}"),
            ("max accuracy (unmasked)", f"{_pct(b.get('accuracy'), 2)} ± {_pct(b.get('accuracy_std'), 2)} %"),
            ("AUC / EER (unmasked)", f"{_num(b.get('auc')):.4f} / {_pct(b.get('eer'), 2)} %")]
    for lab in fl:
        rows.append((f"TPR@FAR={lab} (unmasked)",
                     f"{_pct(b.get(f'tpr@far={lab}'), 2)} ± {_pct(b.get(f'tpr@far={lab}_std'), 2)} %"))
        rows.append((f"ACC@FAR={lab} (unmasked)", f"{_pct(b.get(f'acc@far={lab}'), 2)} %"))
    rows.append(("threshold (squared L2, fit on unmasked)", f"{_num(metrics['fixed_threshold']['threshold']):.4f}"))
    rows.append(("failed (image, variant)s", str(metrics.get("n_failures", 0))))
    if metrics.get("clustering"):
        c = metrics["clustering"]
        rows.append(("clustering", f"{c['n_clusters']} clusters / {c['n_identities']} identities, purity "
                                   f"{c['purity']:.3f}, NMI {c['nmi']:.3f}"))
    return rows


def _grid_sections(metrics: VerificationMetrics) -> list[tuple[str, str]]:
    out = [("accuracy", "Max accuracy (10-fold, %)")]
    for lab in _far_labels(metrics):
        out += [(f"acc@far={lab}", f"ACC@FAR={lab} (%)"), (f"tpr@far={lab}", f"TPR@FAR={lab} (%)"),
                (f"tpr@fdr_paper={lab}", f"TPR at the paper's 'FAR' formula FP/(TP+FP) = {lab} (%)")]
    out += [("accuracy_all", "Accuracy counting missing pairs as errors (%)"),
            ("fixed_threshold_accuracy",
             "Accuracy at the threshold fit on unmasked pairs (paper's fixed-threshold mode, %)")]
    return [s for s in out if s[0] in metrics["grids"]]


def render_markdown(metrics: VerificationMetrics, title: str) -> str:
    """A Markdown report that links the PNGs written beside it."""
    lines = [f"# {title}", "", f"Model: **{metrics.get('model')}**. Rows: template variant; "
             "columns: probe variant. FAR = FP/(FP+TN).", ""]
    lines += ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in _summary_rows(metrics)], ""]
    figs = set(metrics.get("figures", []))
    for key, heading in _grid_sections(metrics):
        lines += [f"## {heading}", "", _grid_table_md(metrics, key), ""]
    for name in sorted(figs):
        lines += [f"![{name}]({name})", ""]
    counts = metrics.get("status_counts", {})
    if counts:
        lines += ["## Embedding status per variant", "", "| variant | counts |", "|---|---|"]
        lines += [f"| {v} | {', '.join(f'{k}: {n}' for k, n in c.items())} |" for v, c in counts.items()]
        methods = ", ".join(f"{k}: {n}" for k, n in metrics.get("alignment_methods", {}).items())
        lines += ["", f"Alignment: {methods}", ""]
    return "\n".join(lines) + "\n"


def render_html(metrics: VerificationMetrics, title: str) -> str:
    """The same report as a standalone HTML page (images referenced beside it)."""
    esc = html.escape
    labels = list(metrics["variants"])
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
             "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
             "img{max-width:100%}</style></head><body>",
             f"<h1>{esc(title)}</h1><p>Model: <b>{esc(str(metrics.get('model')))}</b>. "
             "Rows: template variant; columns: probe variant. FAR = FP/(FP+TN).</p><table>"]
    parts += [f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in _summary_rows(metrics)]
    parts.append("</table>")
    for key, heading in _grid_sections(metrics):
        g = metrics["grids"][key]
        parts.append(f"<h2>{esc(heading)}</h2><table><tr><th>template \\ probe</th>"
                     + "".join(f"<th>{esc(p)}</th>" for p in labels) + "</tr>")
        for i, t in enumerate(labels):
            parts.append(f"<tr><th>{esc(t)}</th>" + "".join(f"<td>{_pct(v)}</td>" for v in g[i]) + "</tr>")
        parts.append("</table>")
    for name in sorted(metrics.get("figures", [])):
        parts.append(f"<p><img src='{esc(name)}' alt='{esc(name)}'></p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

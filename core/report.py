"""HTML report of a spatial cross-validation: table, observed-vs-predicted, folds and residuals.

Self-contained (plots embedded as PNG data URIs, matplotlib's Agg backend), so
that it opens in any browser or in QGIS's result viewer.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Optional

import numpy as np

from .files import atomic_write_text

CSS = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
       "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
       "td:nth-child(-n+2){text-align:left}.best{font-weight:bold;background:#e8f5e9}"
       "img{max-width:100%}")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return "<img src='data:image/png;base64," + base64.b64encode(buf.getvalue()).decode() + "'>"


def _table(cv, chosen: dict) -> str:
    head = ("<tr><th>target</th><th>method</th><th>n</th><th>RMSE (mean ± std)</th>"
            "<th>MAE</th><th>R² (mean ± std)</th><th>R² pooled</th></tr>")
    rows = []
    for r in cv.table():
        cls = " class='best'" if chosen.get(r["target"]) == r["method"] else ""
        rows.append(
            f"<tr{cls}><td>{html.escape(r['target'])}</td><td>{html.escape(r['method'])}</td>"
            f"<td>{r['n']}</td><td>{r['rmse_mean']:.3f} ± {r['rmse_std']:.3f}</td>"
            f"<td>{r['mae_mean']:.3f} ± {r['mae_std']:.3f}</td>"
            f"<td>{r['r2_mean']:.3f} ± {r['r2_std']:.3f}</td><td>{r['r2_pooled']:.3f}</td></tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def _ranking(rows: list) -> str:
    """Backbones ranked per target (soil.rank_backbones rows)."""
    head = ("<tr><th>target</th><th>rank</th><th>backbone</th><th>source</th><th>best method"
            "</th><th>RMSE (mean ± std)</th><th>R² (mean)</th></tr>")
    body = "".join(
        f"<tr{' class=best' if r['rank'] == 1 else ''}><td>{html.escape(r['target'])}</td>"
        f"<td>{r['rank']}</td><td>{html.escape(r['backbone'])}</td>"
        f"<td>{html.escape(r['source'])} ({html.escape(r['arch'])})</td>"
        f"<td>{html.escape(r['method'])}</td><td>{r['rmse_mean']:.3f} ± {r['rmse_std']:.3f}</td>"
        f"<td>{r['r2_mean']:.3f}</td></tr>" for r in rows)
    return ("<h2>Backbones ranked</h2><p>Each backbone's best feature method, on the same "
            "folds with the same heads; 'features' is BACKBONE, the one mapped.</p><table>" +
            head + body + "</table>")


def write_report(path: str, cv, coords: np.ndarray, chosen: dict, title: str = "SoilSSL",
                 notes: Optional[list] = None, ranking: Optional[list] = None) -> str:
    """Write the report of ``cv`` (a cv.CVResult) for points at ``coords`` (N, 2);
    ``ranking``: soil.rank_backbones rows, shown when several backbones were compared."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    sizes = [int((cv.folds == k).sum()) for k in cv.fold_ids]
    parts.append(f"<p>{len(cv.folds)} points, {len(sizes)} spatial folds (K-means of the "
                 f"coordinates) of {sizes} points. Each point is predicted once, by models "
                 f"that never saw its fold. Highlighted: the method refitted for mapping.</p>")
    for note in notes or []:
        parts.append(f"<p>{html.escape(note)}</p>")
    parts.append("<h2>Cross-validation</h2>" + _table(cv, chosen))
    if len({r["backbone"] for r in ranking or []}) > 1:
        parts.append(_ranking(ranking))
    for t, target in enumerate(cv.target_names):
        ok = np.isfinite(cv.y[:, t])
        m = len(cv.methods)
        cols = min(m, 4)
        fig, axes = plt.subplots((m + cols - 1) // cols, cols, figsize=(3.2 * cols,
                                 3.2 * ((m + cols - 1) // cols)), squeeze=False)
        lo, hi = np.nanmin(cv.y[ok, t]), np.nanmax(cv.y[ok, t])
        for i, spec in enumerate(cv.methods):
            ax = axes.flat[i]
            ax.scatter(cv.y[ok, t], cv.predictions[t, i, ok], s=6, c=cv.folds[ok], cmap="tab10")
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_title(spec.label, fontsize=9)
            ax.set_xlabel("observed", fontsize=8)
            ax.set_ylabel("predicted (out of fold)", fontsize=8)
        for ax in list(axes.flat)[m:]:
            ax.axis("off")
        parts.append(f"<h2>{html.escape(target)}: observed vs predicted</h2>" + _png(fig))
        label = chosen[target]
        res = cv.residuals(target, label)
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
        a1.scatter(coords[:, 0], coords[:, 1], c=cv.folds, cmap="tab10", s=10)
        a1.set_title("spatial folds", fontsize=9)
        lim = np.nanmax(np.abs(res)) or 1.0
        sc = a2.scatter(coords[ok, 0], coords[ok, 1], c=res[ok], cmap="RdBu", vmin=-lim,
                        vmax=lim, s=10)
        a2.set_title(f"residuals of {label} (observed − predicted)", fontsize=9)
        fig.colorbar(sc, ax=a2)
        for ax in (a1, a2):
            ax.set_aspect("equal")
            ax.tick_params(labelsize=7)
        parts.append(f"<h2>{html.escape(target)}: folds and residuals</h2>" + _png(fig))
    parts.append("<p><i>Method: Tresson P. et al. (2024), Self-supervised learning of Vision "
                 "Transformers for digital soil mapping using visual data, Geoderma.</i></p>"
                 "</body></html>")
    return atomic_write_text("\n".join(parts), path)

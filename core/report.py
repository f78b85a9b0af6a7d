"""HTML report of a spatial cross-validation: table, observed-vs-predicted, folds and residuals,
and with the CV's feature sets the permutation importance of covariates vs ViT features on
the held-out folds, the points' feature space in 2-D per backbone, and one sentence saying
whether the ViT features beat the pixel baseline (rf_pixels) and by how much.

Self-contained (plots embedded as PNG data URIs), so that it opens in any browser or in
QGIS's result viewer.  The plots use matplotlib's object-oriented API: a ``Figure`` drawn
by its own Agg canvas.  No pyplot and no ``matplotlib.use``: the report is written from a
Processing worker thread, and pyplot's global state (or a backend switch) would reach the
whole QGIS process.
"""
from __future__ import annotations

import base64
import html
import io
from typing import List, Mapping, Optional

import numpy as np

from .classes import report_html
from .cv import BASELINE, FEATURES, SELECTED
from .spread import spread_clause, spread_note
from .files import atomic_write_text
from .importance import COVARIATE_BLOCKS, COVARIATES, VIT, grouped_importance, spec_blocks
from .ranking import ranking_score

CSS = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
       "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
       "td:nth-child(-n+2){text-align:left}.best{font-weight:bold;background:#e8f5e9}"
       "img{max-width:100%}.note{max-width:60em;color:#333}")

R2_NOTE = ("Why R² can be negative per fold while the pooled R² is positive: R² per fold "
           "compares a fold's errors with the spread of the property <i>inside that fold</i>. "
           "A spatial fold is one compact area where the property varies little, so even "
           "small errors can exceed that local spread (R² &lt; 0) — the model is not worse "
           "than a constant there, the fold is nearly constant. The pooled R² compares all "
           "out-of-fold predictions with the spread over the whole study area, which is what "
           "a map has to reproduce. RMSE and MAE do not depend on the spread: judge methods "
           "by them first.")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return "<img src='data:image/png;base64," + base64.b64encode(buf.getvalue()).decode() + "'>"


def _fold_colours(fold_ids):
    from matplotlib import colormaps
    cmap = colormaps["tab10"] if len(fold_ids) <= 10 else colormaps["tab20"]
    return {k: cmap(i % cmap.N) for i, k in enumerate(fold_ids)}


def _plain_coordinates(ax) -> None:
    """Map coordinates as plain numbers (no '1e6' offset), few enough not to overlap."""
    from matplotlib.ticker import MaxNLocator
    ax.ticklabel_format(axis="both", style="plain", useOffset=False)
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.yaxis.set_major_locator(MaxNLocator(5))
    ax.tick_params(labelsize=7)
    for label in ax.get_xticklabels():
        label.set_rotation(30)
        label.set_horizontalalignment("right")


def _table(cv, chosen: dict) -> str:
    head = ("<tr><th>target</th><th>method</th><th>n</th><th>RMSE (mean ± std)</th>"
            "<th>MAE</th><th>R² per fold (mean ± std)</th><th>R² pooled</th></tr>")
    rows = []
    for r in cv.table():
        if r["kind"] != "regression":  # class targets: classes.report_html
            continue
        cls = " class='best'" if chosen.get(r["target"]) == r["method"] else ""
        rows.append(
            f"<tr{cls}><td>{html.escape(r['target'])}</td><td>{html.escape(r['method'])}</td>"
            f"<td>{r['n']}</td><td>{r['rmse_mean']:.3f} ± {r['rmse_std']:.3f}</td>"
            f"<td>{r['mae_mean']:.3f} ± {r['mae_std']:.3f}</td>"
            f"<td>{r['r2_mean']:.3f} ± {r['r2_std']:.3f}</td><td>{r['r2_pooled']:.3f}</td></tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def figures(cv, coords: np.ndarray, chosen: dict) -> List[tuple]:
    """[(heading, Figure)] of the report: per target, observed vs predicted per method, then
    the folds and the chosen method's residuals on the map."""
    colours = _fold_colours(list(cv.fold_ids))
    out = []
    for t, target in enumerate(cv.target_names):
        if cv.kind(target) != "regression":  # class targets: tables in classes.report_html
            continue
        ok = np.isfinite(cv.y[:, t])
        m = len(cv.methods)
        cols = min(m, 4)
        rows = (m + cols - 1) // cols
        fig = _figure(3.4 * cols, 3.3 * rows + 0.5)
        axes = fig.subplots(rows, cols, squeeze=False)
        lo, hi = np.nanmin(cv.y[ok, t]), np.nanmax(cv.y[ok, t])
        for i, spec in enumerate(cv.methods):
            ax = axes.flat[i]
            for k in cv.fold_ids:
                sel = ok & (cv.folds == k)
                ax.scatter(cv.y[sel, t], cv.predictions[t, i, sel], s=8, color=colours[k],
                           label=f"fold {k}")
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_title(spec.label, fontsize=9)
            ax.set_xlabel("observed", fontsize=8)
            ax.set_ylabel("predicted (out of fold)", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[m:]:
            ax.axis("off")
        axes.flat[m - 1].legend(fontsize=7, title="spatial fold", title_fontsize=7,
                                loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        out.append((f"{target}: observed vs predicted", fig))

        label = chosen[target]
        res = cv.residuals(target, label)
        fig = _figure(11, 4.8)
        a1, a2 = fig.subplots(1, 2)
        for k in cv.fold_ids:
            sel = cv.folds == k
            a1.scatter(coords[sel, 0], coords[sel, 1], color=colours[k], s=10, label=f"fold {k}")
        a1.set_title("spatial folds", fontsize=9)
        a1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14),
                  ncols=min(len(cv.fold_ids), 6), frameon=False, columnspacing=1.0,
                  handletextpad=0.2)
        lim = float(np.nanmax(np.abs(res))) if np.isfinite(res).any() else 1.0
        sc = a2.scatter(coords[ok, 0], coords[ok, 1], c=res[ok], cmap="RdBu", vmin=-(lim or 1),
                        vmax=lim or 1, s=10)
        a2.set_title(f"residuals of {label} (observed − predicted)", fontsize=9)
        bar = fig.colorbar(sc, ax=a2, shrink=0.9)
        bar.set_label("residual", fontsize=8)
        bar.ax.tick_params(labelsize=7)
        for ax in (a1, a2):
            ax.set_aspect("equal")
            _plain_coordinates(ax)
        out.append((f"{target}: folds and residuals", fig))
    return out


def _sets_sections(cv, sets, chosen: dict, seed: int) -> List[str]:
    """Importance (covariates vs ViT features) and the feature-space view."""
    parts = []
    rows = importance_rows(cv, sets, chosen, seed=seed)
    if rows:
        parts.append(
            "<h2 id='importance'>Permutation importance: covariates vs ViT features</h2>"
            "<p class='note'>Each fold model's held-out points are scored again with one "
            "group of its inputs shuffled among them; the loss of skill, averaged over folds "
            "and 5 repeats, is that group's importance. Covariates: the pixel values (and "
            "context statistics) at the points; ViT features: the backbone's features.</p>"
            + _importance_table(rows) + _png(importance_figure(rows)))
    fig = feature_view(cv, sets, seed)
    if fig is not None:
        parts.append("<h2 id='feature-view'>Feature space</h2><p class='note'>The points' "
                     "ViT features in two dimensions, coloured by each property: properties "
                     "that vary smoothly across the cloud are what the features can "
                     "predict.</p>" + _png(fig))
    return parts


def _ranking(rows: list) -> str:
    """Backbones ranked per target (ranking.rank_backbones rows)."""
    head = ("<tr><th>target</th><th>rank</th><th>backbone</th><th>source</th><th>best method"
            "</th><th>score (mean ± std over folds)</th></tr>")
    body = "".join(
        f"<tr{' class=best' if r['rank'] == 1 else ''}><td>{html.escape(r['target'])}</td>"
        f"<td>{r['rank']}</td><td>{html.escape(r['backbone'])}</td>"
        f"<td>{html.escape(r['source'])} ({html.escape(r['arch'])})</td>"
        f"<td>{html.escape(r['method'])}</td><td>{html.escape(ranking_score(r))}</td></tr>"
        for r in rows)
    return ("<h2>Backbones ranked</h2><p>Each backbone's best feature method, on the same "
            "folds with the same heads (lowest RMSE; highest kappa for soil classes); "
            "'features' is BACKBONE, the one mapped.</p><table>" + head + body + "</table>")


TRUST_NOTE = ("Each point's dissimilarity index (DI) is measured against the points of the "
              "other folds, so it says how far the point was from what its fold model saw. "
              "The curve is the expected error map's: a monotone (isotonic) fit of the "
              "moving-window RMSE (5 points) against DI, on the points inside the area of "
              "applicability (as CAST's errorProfiles). Intervals are conformal: "
              "|residual| / expected error, quantile ⌈(n+1)·level⌉ of n. Coverage is "
              "honest: for each fold, the curve and the quantile come from the other folds "
              "only and the fold's points are tested.")


def _trust_section(cv, model: dict) -> str:
    """Expected error (DI vs |CV residual| with the fitted curve) and the held-out coverage
    of the prediction intervals, per target with a calibration in ``model``."""
    from .errorprofile import aoa_state, expected_error, point_di
    conformal = model.get("conformal") or {}
    if not conformal:
        return ""
    rows, plots = [], []
    for target, cal in conformal.items():
        label = model["methods"][target]
        for h in cal.get("heldout", []):
            folds = ", ".join(f"{v:.0%}" for v in h["per_fold"].values())
            rows.append(f"<tr><td>{html.escape(target)}</td><td>{html.escape(label)}</td>"
                        f"<td>{h['level']:.0%}</td><td>{h['coverage']:.1%}</td>"
                        f"<td>{h['mean_width']:.3f}</td><td>{folds}</td></tr>")
        profile = (model.get("error_profile") or {}).get(target)
        state = aoa_state(model, target)
        res = cv.residuals(target, label)
        di = point_di(state, res)
        if profile is None or di is None:
            continue
        ok = np.isfinite(di) & np.isfinite(res)
        fig = _figure(6.5, 4.2)
        ax = fig.subplots()
        colours = _fold_colours(list(cv.fold_ids))
        for k in cv.fold_ids:
            sel = ok & (cv.folds == k)
            ax.scatter(di[sel], np.abs(res[sel]), s=9, color=colours[k], label=f"fold {k}")
        grid = np.linspace(0, float(np.nanmax(di[ok])) * 1.02, 200)
        ax.plot(grid, expected_error(profile, grid), "k-", lw=1.5, label="expected RMSE")
        if state is not None and state.get("threshold") is not None:
            ax.axvline(float(state["threshold"]), color="grey", ls="--", lw=0.8,
                       label="AOA threshold")
        ax.set_xlabel("DI against the other folds", fontsize=8)
        ax.set_ylabel(f"|CV residual| of {label}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper left", frameon=False)
        plots.append(f"<h3>{html.escape(target)}: DI vs cross-validated error</h3>" + _png(fig))
    head = ("<tr><th>target</th><th>method</th><th>level</th><th>held-out coverage</th>"
            "<th>mean width</th><th>per fold</th></tr>")
    return ("<h2>Expected error and prediction intervals</h2>"
            f"<p class='note'>{TRUST_NOTE}</p><table>" + head + "".join(rows) + "</table>" +
            "".join(plots))
FOLD_TEXT = {"kmeans": "K-means of the coordinates", "random": "random",
             "knndm": "kNNDM: test-to-training distances matched to the map's"}
GEODIST_COLOURS = {"sample-to-sample": "#1B9E77", "prediction-to-sample": "#D95F02",
                   "kmeans": "#7570B3", "random": "#E7298A", "knndm": "#66A61E"}
GEODIST_NOTE = (
    "Nearest-neighbour distances, as CAST's geodist plots them: from each sample to the "
    "nearest other sample, from each map location (a sample of the raster's valid pixels) "
    "to the nearest sample, and in each cross-validation from each held-out point to the "
    "nearest training point. The CV error is an honest estimate of the map's error when "
    "the CV distances follow the prediction-to-sample ones: W (the area between the two "
    "ECDFs, in map units) measures the mismatch, lower is closer. CV distances shorter "
    "than the map's (typical of random folds on clustered points) make the CV "
    "optimistic; longer ones (K-means folds on points spread over the area) pessimistic. "
    "kNNDM folds (Linnenbrink et al. 2024) are chosen to make W small.")


def geodist_figure(gd):
    """CAST's geodist plot: ECDFs (left) and densities (right) of the sample-to-sample,
    prediction-to-sample and each fold mode's CV nearest-neighbour distances."""
    from scipy.stats import gaussian_kde
    curves = [("sample-to-sample", gd.sample, GEODIST_COLOURS["sample-to-sample"], "-"),
              ("prediction-to-sample", gd.prediction, GEODIST_COLOURS["prediction-to-sample"],
               "-")]
    curves += [(f"CV, {name} folds (W = {gd.W[name]:.3g}){' — used' if name == gd.used else ''}",
                d, GEODIST_COLOURS.get(name, "#666666"), "--") for name, d in gd.cv.items()]
    fig = _figure(11, 4.6)
    a1, a2 = fig.subplots(1, 2)
    top = max(float(np.max(d)) for _, d, _, _ in curves) or 1.0
    grid = np.linspace(0.0, top, 256)
    for label, d, colour, style in curves:
        x = np.sort(d)
        a1.step(np.r_[0.0, x], np.r_[0.0, np.arange(1, len(x) + 1) / len(x)], where="post",
                color=colour, ls=style, lw=1.4, label=label)
        if len(x) > 1 and np.ptp(x) > 0:
            dens = gaussian_kde(x)(grid)
            a2.plot(grid, dens, color=colour, ls=style, lw=1.4)
            a2.fill_between(grid, dens, color=colour, alpha=0.12)
    a1.set_ylabel("ECDF", fontsize=8)
    a2.set_ylabel("density", fontsize=8)
    for ax in (a1, a2):
        ax.set_xlabel("nearest-neighbour distance (map units)", fontsize=8)
        ax.set_xlim(0, top)
        ax.tick_params(labelsize=7)
    a1.legend(fontsize=7, loc="lower right", framealpha=0.8)
    return fig


def _geodist_section(gd) -> str:
    head = ("<tr><th>folds</th><th>W (map units)</th><th>median CV distance</th>"
            "<th>used</th></tr>")
    body = "".join(
        f"<tr{' class=best' if r['used'] else ''}><td>{html.escape(r['folds'])}</td>"
        f"<td>{r['W']:.4g}</td><td>{r['median_cv_distance']:.4g}</td>"
        f"<td>{'yes' if r['used'] else ''}</td></tr>" for r in gd.table())
    return ("<h2>Do the folds test the map? (nearest-neighbour distances)</h2>"
            f"<p class='note'>{GEODIST_NOTE} Median prediction-to-sample distance: "
            f"{float(np.median(gd.prediction)):.4g}; sample-to-sample: "
            f"{float(np.median(gd.sample)):.4g} (W {gd.W_sample:.4g}). "
            f"{html.escape(' '.join(gd.notes))}</p><table>" + head +
            body + "</table>" + _png(geodist_figure(gd)))
# ----------------------------------------------------------------------------- ViT vs pixels

STACK_BEHIND = 2.0  # % worse than rf_pixels in nested CV: the report advises rf_pixels


def _row_score(row: dict):
    """(value, higher is better) of a CV table row: mean RMSE, or kappa for classes."""
    rmse = row.get("rmse_mean")
    if rmse is not None and np.isfinite(rmse):
        return float(rmse), False
    for key in ("kappa_mean", "kappa"):
        if row.get(key) is not None and np.isfinite(row[key]):
            return float(row[key]), True
    return None, False


def baseline_comparison(cv) -> List[dict]:
    """Per target: the best method using BACKBONE's ViT features (alone or with the
    covariates) against the pixel baseline rf_pixels, by mean CV RMSE (kappa for a class
    target): target, metric, method, value, baseline, percent (how much better, > 0 when
    the ViT features win), better."""
    # the stack (row 'selected') mixes methods with and without features: stack_sentence
    uses = {s.label: FEATURES in spec_blocks(s) and s.label != SELECTED for s in cv.methods}
    rows = {}
    for r in cv.table():
        rows.setdefault(r["target"], []).append(r)
    out = []
    for target in cv.target_names:
        base = next((r for r in rows.get(target, []) if r["method"] == BASELINE), None)
        if base is None:
            continue
        b, higher = _row_score(base)
        scored = [(v, r["method"]) for r in rows[target] if uses.get(r["method"])
                  for v, h in [_row_score(r)] if v is not None and h == higher]
        if b is None or not scored:
            continue
        v, label = (max if higher else min)(scored)
        gain = (v - b) if higher else (b - v)
        out.append({"target": target, "metric": "kappa" if higher else "RMSE", "method": label,
                    "value": v, "baseline": b, "better": gain > 0,
                    "percent": 100.0 * gain / abs(b) if b else float("nan")})
    return out


def baseline_sentence(cv) -> Optional[str]:
    """One plain sentence: do the ViT features beat the pixel baseline here, by how much."""
    rows = baseline_comparison(cv)
    if not rows:
        return None
    wins = [r["target"] for r in rows if r["better"]]
    if len(wins) == len(rows):
        head = "On this data the ViT features beat the pixel baseline (rf_pixels)"
    elif not wins:
        head = "On this data the ViT features do not beat the pixel baseline (rf_pixels)"
    else:
        head = (f"On this data the ViT features beat the pixel baseline (rf_pixels) for "
                f"{', '.join(wins)} but not for "
                f"{', '.join(r['target'] for r in rows if not r['better'])}")
    parts = []
    for r in rows:
        how = ("lower" if r["better"] else "higher") if r["metric"] == "RMSE" \
            else ("higher" if r["better"] else "lower")
        parts.append(f"for {r['target']}, {r['method']} has {r['metric']} {r['value']:.4g} "
                     f"against {r['baseline']:.4g}, {abs(r['percent']):.1f} % {how}"
                     + spread_clause(cv, r["target"], r["percent"]))
    return head + ": " + "; ".join(parts) + "."


def _stack_rows(cv) -> List[tuple]:
    """(target, weights, nested-CV score, rf_pixels score or None, higher is better) of
    every target METHOD=all maps with a stack."""
    stacks = getattr(cv, "stacks", None) or {}
    rows = {(r["target"], r["method"]): r for r in cv.table()}
    out = []
    for target in cv.target_names:
        if target not in stacks or (target, SELECTED) not in rows:
            continue
        v, higher = _row_score(rows[(target, SELECTED)])
        base = rows.get((target, BASELINE))
        out.append((target, stacks[target], v, _row_score(base)[0] if base else None, higher))
    return out


def _gain(v, b, higher) -> float:
    """% by which score v beats the baseline b (> 0: better)."""
    return 100.0 * ((v - b) if higher else (b - v)) / abs(b)


def _baseline_alone(cv, target: str, weights: Mapping[str, float]) -> bool:
    """Whether the mapped stack of ``target`` is rf_pixels alone, without kriged residuals."""
    from .stacking import kriged_field
    return kriged_field(cv, target) is None and set(weights) == {BASELINE}


def stack_advice(cv) -> Optional[str]:
    """The advice for the targets whose stack scores more than STACK_BEHIND % worse than
    rf_pixels in nested CV (None when there is none).  Where the mapped stack is rf_pixels
    alone already, the shortfall came from outer folds whose inner CV departed from it:
    the map needs no change, and the advice says so instead."""
    behind = [(t, _baseline_alone(cv, t, w)) for t, w, v, b, higher in _stack_rows(cv)
              if v is not None and b and _gain(v, b, higher) < -STACK_BEHIND]
    change = [t for t, alone in behind if not alone]
    already = [t for t, alone in behind if alone]
    out = []
    if change:
        out.append(f"For {', '.join(change)} the stack scores more than {STACK_BEHIND:g} % "
                   f"worse than rf_pixels: its weights, fitted on few points, do not carry "
                   f"over to new ones. Map with METHOD=rf_pixels there.")
    if already:
        out.append(f"For {', '.join(already)} the nested CV scores the stack more than "
                   f"{STACK_BEHIND:g} % worse than rf_pixels because some folds' inner CV "
                   f"moved away from rf_pixels and that did not carry over; the map uses "
                   f"rf_pixels alone already.")
    return " ".join(out) or None


def stack_sentence(cv) -> Optional[str]:
    """What METHOD=all maps with, per target: the stack's weights, and its honest (nested)
    CV score against rf_pixels (with :func:`stack_advice`)."""
    from .stacking import stack_text
    parts = []
    kriging = getattr(cv, "kriging", None) or {}
    for target, _, v, b, higher in _stack_rows(cv):
        text = f"for {target}, {stack_text(cv, target)}"
        if v is not None and b:
            gain = _gain(v, b, higher)
            metric = "kappa" if higher else "RMSE"
            how = ("higher" if gain > 0 else "lower") if higher else \
                ("lower" if gain > 0 else "higher")
            text += (f" (nested-CV {metric} {v:.4g} against rf_pixels {b:.4g}, "
                     f"{abs(gain):.1f} % {how}{spread_clause(cv, target, gain)})")
        parts.append(text)
    if not parts:
        return None
    out = ("The map uses a stack, a weighted mean of the methods with weights fitted to their "
           "out-of-fold predictions and pulled toward rf_pixels alone unless leaving out one "
           "fold at a time shows a steady gain (one-standard-error rule); the row 'selected' "
           "scores it with weights from an inner CV" + (
               ", numeric targets with their out-of-fold residuals kriged (regression "
               "kriging) where leaving out one fold at a time shows a steady gain, nested "
               "the same way" if kriging else "") + ": " + "; ".join(parts) + ".")
    advice = stack_advice(cv)
    return out + " " + advice if advice else out


# ----------------------------------------------------------------------------- importance

def importance_rows(cv, sets: Mapping[str, np.ndarray], chosen: dict, repeats: int = 5,
                    seed: int = 0) -> List[dict]:
    """Grouped permutation importance (covariates vs ViT features) on the held-out folds,
    per target, of the mapped method and of every row that uses both groups."""
    out = []
    for t, target in enumerate(cv.target_names):
        labels = [s.label for s in cv.methods if s.label == chosen.get(target) or (
            any(b in COVARIATE_BLOCKS for b in spec_blocks(s))
            and any(b not in COVARIATE_BLOCKS for b in spec_blocks(s)))]
        for label in labels:
            if (target, label) not in (cv.fold_models or {}):
                continue
            if any(b not in sets for b in spec_blocks(cv.methods[cv.labels.index(label)])):
                continue
            imp = grouped_importance(cv, sets, target, label, repeats, seed)
            out.append({"target": target, "method": label, **imp.as_dict()})
    return out


def importance_figure(rows: List[dict]):
    """Bars of the grouped importance (mean ± std over folds and repeats) per target."""
    targets = list(dict.fromkeys(r["target"] for r in rows))
    fig = _figure(5.5 * min(len(targets), 3), 0.6 + 0.55 * max(
        sum(len(r["names"]) for r in rows if r["target"] == t) for t in targets) + 0.8)
    axes = fig.subplots(1, len(targets), squeeze=False)[0]
    colour = {COVARIATES: "#8d6e63", VIT: "#1e88e5"}
    for ax, target in zip(axes, targets):
        labels, values, errors, colours = [], [], [], []
        for r in (r for r in rows if r["target"] == target):
            for name, m, sd in zip(r["names"], r["mean"], r["std"]):
                labels.append(f"{r['method']}: {name}")
                values.append(m)
                errors.append(sd)
                colours.append(colour.get(name, "grey"))
        pos = np.arange(len(labels))[::-1]
        ax.barh(pos, values, xerr=errors, color=colours, capsize=3)
        ax.set_yticks(pos, labels, fontsize=8)
        ax.axvline(0, color="k", lw=0.6)
        metric = next(r["metric"] for r in rows if r["target"] == target)
        ax.set_xlabel("increase of RMSE when permuted" if metric == "rmse"
                      else f"loss of {metric} when permuted", fontsize=8)
        ax.set_title(target, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    return fig


def _importance_table(rows: List[dict]) -> str:
    head = ("<tr><th>target</th><th>method</th><th>held-out score</th><th>group</th>"
            "<th>importance (mean ± std)</th></tr>")
    body = "".join(
        f"<tr><td>{html.escape(r['target'])}</td><td>{html.escape(r['method'])}</td>"
        f"<td>{r['metric']} {r['baseline']:.3f}</td><td>{html.escape(n)}</td>"
        f"<td>{m:.3f} ± {sd:.3f}</td></tr>"
        for r in rows for n, m, sd in zip(r["names"], r["mean"], r["std"]))
    return "<table>" + head + body + "</table>"


# ----------------------------------------------------------------------------- feature view

def embed_2d(X, seed: int = 0):
    """(Y (N, 2), name): UMAP of the standardised features when umap-learn is installed,
    else their first two principal components."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler
    Z = StandardScaler().fit_transform(np.asarray(X, dtype=np.float64))
    try:
        import umap  # optional
    except ImportError:
        umap = None
    if umap is not None and Z.shape[0] > 4:
        reducer = umap.UMAP(n_components=2, random_state=seed,
                            n_neighbors=min(15, Z.shape[0] - 1))
        return reducer.fit_transform(Z), "UMAP"
    n = min(2, Z.shape[0], Z.shape[1])
    Y = PCA(n_components=n, random_state=seed).fit_transform(Z)
    if n < 2:
        Y = np.column_stack([Y, np.zeros((Y.shape[0], 2 - n))])
    return Y, "PCA"


def backbone_sets(cv, sets: Mapping[str, np.ndarray]) -> List[str]:
    """The ViT feature sets of the CV: BACKBONE's first, then the compared backbones'."""
    names = [FEATURES] if FEATURES in sets else []
    for spec in cv.methods:
        for b in spec_blocks(spec):
            if b in sets and b not in names and b not in COVARIATE_BLOCKS and b != "patch":
                names.append(b)
    return names


def feature_view(cv, sets: Mapping[str, np.ndarray], seed: int = 0):
    """The paper's feature-space view: the points' features in 2-D, one column per
    backbone, one row per target, coloured by the target's value."""
    names = backbone_sets(cv, sets)
    if not names:
        return None
    T = len(cv.target_names)
    fig = _figure(4.0 * len(names) + 0.8, 3.6 * T + 0.3)
    axes = fig.subplots(T, len(names), squeeze=False)
    for j, name in enumerate(names):
        Y, how = embed_2d(sets[name], seed)
        for t, target in enumerate(cv.target_names):
            ax = axes[t, j]
            v = cv.y[:, t]
            ok = np.isfinite(v)
            ax.scatter(Y[~ok, 0], Y[~ok, 1], s=6, color="lightgrey")
            sc = ax.scatter(Y[ok, 0], Y[ok, 1], c=v[ok], s=9, cmap="viridis")
            bar = fig.colorbar(sc, ax=ax, shrink=0.85)
            bar.set_label(target, fontsize=8)
            bar.ax.tick_params(labelsize=7)
            shown = "BACKBONE" if name == FEATURES else name
            ax.set_title(f"{shown} ({how}) — {target}", fontsize=9)
            ax.set_xlabel(f"{how} 1", fontsize=8)
            ax.set_ylabel(f"{how} 2", fontsize=8)
            ax.tick_params(labelsize=7)
    return fig


def write_report(path: str, cv, coords: np.ndarray, chosen: dict, title: str = "SoilSSL",
                 notes: Optional[list] = None, ranking: Optional[list] = None,
                 model: Optional[dict] = None, geodist=None,
                 sets: Optional[Mapping[str, np.ndarray]] = None, seed: int = 0) -> str:
    """Write the report of ``cv`` (a cv.CVResult) for points at ``coords`` (N, 2);
    ``ranking``: ranking.rank_backbones rows, shown when several backbones were compared;
    ``model``: the model dict, for its error profile and interval coverage;
    ``geodist``: a knndm.GeoDist, shown as CAST's geodist plot with the W of each fold mode;
    ``sets`` (the CV's feature sets, FitResult.sets): adds the permutation importance of
    covariates vs ViT features on the held-out folds and the feature-space view."""
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    sizes = [int((cv.folds == k).sum()) for k in cv.fold_ids]
    how = FOLD_TEXT.get(geodist.used if geodist is not None else "kmeans", "")
    parts.append(f"<p>{len(cv.folds)} points, {len(sizes)} folds ({how}) of {sizes} "
                 f"points. Each point is predicted once, by models that never saw its fold. "
                 f"Highlighted: the method refitted for mapping.</p>")
    for note in notes or []:
        parts.append(f"<p>{html.escape(note)}</p>")
    sentence = baseline_sentence(cv)
    if sentence:
        parts.append(f"<p class='verdict'><b>{html.escape(sentence)}</b></p>")
    stacked = stack_sentence(cv)
    if stacked:
        parts.append(f"<p class='verdict'>{html.escape(stacked)}</p>")
    note = spread_note(cv) if sentence or stacked else None
    if note:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    parts.append("<h2>Cross-validation</h2>" + _table(cv, chosen) + report_html(cv, chosen))
    if len({r["backbone"] for r in ranking or []}) > 1:
        parts.append(_ranking(ranking))
    if any(r.get("r2_mean", 0) < 0 < r.get("r2_pooled", 0) for r in cv.table()):
        parts.append(f"<p class='note'>{R2_NOTE}</p>")
    for heading, fig in figures(cv, coords, chosen):
        parts.append(f"<h2>{html.escape(heading)}</h2>" + _png(fig))
    if model:
        parts.append(_trust_section(cv, model))
    if geodist is not None:
        parts.append(_geodist_section(geodist))
    if sets:
        parts += _sets_sections(cv, sets, chosen, seed)
    parts.append("<p><i>Method: Tresson P. et al. (2024), Self-supervised learning of Vision "
                 "Transformers for digital soil mapping using visual data, Geoderma.</i></p>"
                 "</body></html>")
    return atomic_write_text("\n".join(parts), path)

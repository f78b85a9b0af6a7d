"""Backbones ranked against each other on the same folds with the same heads
(COMPARE_BACKBONE): per target, each backbone's best feature method, by mean RMSE over
folds, or by mean Cohen's kappa for a class target.  The rows are fitpoints'
BACKBONE_RANKING output, log lines and the report's table."""
from __future__ import annotations

import numpy as np

from .classes import CLASSIFICATION, KAPPA


def rank_backbones(cv, backbones: dict) -> list:
    """Per target, the backbones ranked by their best feature method (same folds, same heads
    for all): the lowest mean RMSE over folds, or for a class target the highest mean
    Cohen's kappa.  Rows with target, rank, backbone (feature set; 'features' is BACKBONE),
    source, arch, method, metric ("rmse" | "kappa") and rmse_mean, rmse_std, r2_mean or
    kappa_mean, kappa_std."""
    mean, std = cv.summary()
    if cv.class_fold_metrics is not None:
        class_mean, class_std = cv.class_summary()
    rows = []
    for t, target in enumerate(cv.target_names):
        is_class = cv.kind(target) == CLASSIFICATION
        if is_class:
            score = -class_mean[t, :, KAPPA]  # lower = better
            spread = class_std[t, :, KAPPA]
        else:
            score, spread = mean[t, :, 0], std[t, :, 0]
        best = []
        for name, bb in backbones.items():
            ms = [m for m, spec in enumerate(cv.methods)
                  if spec.features == name and np.isfinite(score[m])]
            if ms:
                m = min(ms, key=lambda m: score[m])
                best.append((float(score[m]), name, bb, m))
        for rank, (value, name, bb, m) in enumerate(sorted(best, key=lambda b: b[0]), 1):
            row = {"target": target, "rank": rank, "backbone": name,
                   "source": str(bb.source), "arch": bb.arch, "method": cv.methods[m].label,
                   "metric": "kappa" if is_class else "rmse"}
            if is_class:
                row.update(kappa_mean=-value, kappa_std=float(spread[m]))
            else:
                row.update(rmse_mean=value, rmse_std=float(spread[m]),
                           r2_mean=float(mean[t, m, 2]))
            rows.append(row)
    return rows


def ranking_score(row: dict) -> str:
    """'RMSE 0.412 ± 0.051, R² 0.310' or 'kappa 0.62 ± 0.08' of a rank_backbones row."""
    if row.get("metric") == "kappa":
        return f"kappa {row['kappa_mean']:.3f} ± {row['kappa_std']:.3f}"
    return f"RMSE {row['rmse_mean']:.3f} ± {row['rmse_std']:.3f}, R² {row['r2_mean']:.3f}"


def format_ranking(rows: list) -> str:
    """The ranking of :func:`rank_backbones` as log lines."""
    if len({r["backbone"] for r in rows}) < 2:
        return ""
    lines = ["Backbones ranked over the same folds (best feature method each; mean RMSE, or "
             "kappa for soil classes):"]
    lines += [f"  {r['target']}: {r['rank']}. {r['backbone']} ({r['source']}, {r['arch']}): "
              f"{r['method']} {ranking_score(r)}" for r in rows]
    return "\n".join(lines)

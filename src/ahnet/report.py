"""One self-contained HTML page per run: metric tables and pictures (Fig. 5-7 style).

Segmentation: Dice global and per case (§4.2, Table 5) and, per case, axial, coronal and sagittal
slices with truth (solid) and prediction (dashed) contours. Detection: FROC table and curve (§4.1,
Table 4, Fig. 6) and, per case, maximum-intensity projections of the predicted heatmap on the xy,
xz and yz planes with the truth lesion centres (green circles) and detections (red crosses), as
Fig. 5. Pictures are embedded as PNG data, so the page is one file that opens anywhere.
Views are drawn in network orientation (Z = thick-slice axis) with each axis scaled by its spacing.
"""

from __future__ import annotations

import base64
import html
import io
import tempfile
from pathlib import Path

import numpy as np

from .data.volume import boxes_to_network, load_volume
from .errors import DataError

TRUTH, PREDICTION = "#2ca02c", "#d62728"


def _figure():
    from matplotlib.figure import Figure

    return Figure(figsize=(11, 3.8), dpi=90)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _display_range(image: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(image, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


def _show(ax, plane: np.ndarray, spacing: tuple[float, float], title: str, **kw) -> None:
    """``plane`` has axes (a, b); a runs left to right, b bottom to top, scaled by their spacing."""
    ax.imshow(plane.T, origin="lower", aspect=spacing[1] / spacing[0], interpolation="nearest", **kw)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def segmentation_views(case: str, image_path: Path, truth_path: Path, pred_path: Path) -> str:
    """Axial, coronal and sagittal slices through the largest structure, truth and prediction contours."""
    image, truth, pred = load_volume(image_path), load_volume(truth_path, is_label=True), load_volume(pred_path, is_label=True)
    if not (image.array.shape == truth.array.shape == pred.array.shape):
        raise DataError(f"case {case}: image, truth and prediction shapes differ "
                        f"({image.array.shape}, {truth.array.shape}, {pred.array.shape})")
    img, t, p = image.array, truth.array, pred.array
    focus = t == t.max() if t.max() > 0 else p > 0
    if focus.any():  # through the centre of the rarest truth class (lesions first), its largest slice
        x, y, _ = (int(round(c.mean())) for c in np.nonzero(focus))
        z = int(np.argmax(focus.sum((0, 1))))
    else:
        x, y, z = (s // 2 for s in t.shape)
    sx, sy, sz = image.spacing
    vmin, vmax = _display_range(img)
    classes = [int(c) for c in np.union1d(np.unique(t), np.unique(p)) if c > 0]
    fig = _figure()
    axes = fig.subplots(1, 3)
    views = [("axial (xy), z=%d" % z, img[:, :, z], t[:, :, z], p[:, :, z], (sx, sy)),
             ("coronal (xz), y=%d" % y, img[:, y, :], t[:, y, :], p[:, y, :], (sx, sz)),
             ("sagittal (yz), x=%d" % x, img[x, :, :], t[x, :, :], p[x, :, :], (sy, sz))]
    for ax, (title, plane, tt, pp, spacing) in zip(axes, views):
        _show(ax, plane, spacing, title, cmap="gray", vmin=vmin, vmax=vmax)
        for c, width in zip(classes, (1.2, 2.0, 2.5, 3.0)):
            for mask, colour, style in ((tt == c, TRUTH, "solid"), (pp == c, PREDICTION, "dashed")):
                if mask.any() and not mask.all():
                    ax.contour(mask.T.astype(float), levels=[0.5], colors=colour, linewidths=width, linestyles=style)
    fig.suptitle(f"{case}: truth solid green, prediction dashed red", fontsize=11)
    return _png(fig)


def detection_views(case: str, heatmap_path: Path, boxes: list, detections: list) -> str:
    """Maximum-intensity projections of the heatmap (xy, xz, yz) with truth centres and detections."""
    heat = load_volume(heatmap_path)
    h, axes_order = heat.array, heat.axes
    sx, sy, sz = heat.spacing
    centres = [((b[0] + b[3]) / 2, (b[1] + b[4]) / 2, (b[2] + b[5]) / 2) for b in boxes_to_network(boxes, axes_order)]
    found = [tuple(d[i] for i in axes_order) for d in detections]  # file axes -> network axes
    fig = _figure()
    axes = fig.subplots(1, 3)
    vmax = float(h.max()) if h.max() > 0 else 1.0
    views = [("xy MIP", h.max(2), (0, 1), (sx, sy)), ("xz MIP", h.max(1), (0, 2), (sx, sz)),
             ("yz MIP", h.max(0), (1, 2), (sy, sz))]
    for ax, (title, plane, (a, b), spacing) in zip(axes, views):
        _show(ax, plane, spacing, title, cmap="hot", vmin=0, vmax=vmax)
        for c in centres:
            ax.plot(c[a], c[b], "o", mfc="none", mec=TRUTH, ms=14, mew=2)
        for d in found:
            ax.plot(d[a], d[b], "x", color="#1f77b4", ms=9, mew=2)
    fig.suptitle(f"{case}: truth centres (green circles), detections (blue crosses)", fontsize=11)
    return _png(fig)


def _table(rows: list[list], header: list[str]) -> str:
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(title: str, sections: list[str]) -> str:
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
             "th{background:#f3f3f3}img{max-width:100%;display:block;margin:0.5em 0 1.5em}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>")


def _write(path: Path, text: str) -> Path:
    from .fileio import atomic_write_text

    return atomic_write_text(path, text)


def _case_file(folder: str | Path, case: str) -> Path | None:
    """``{case}.nii.gz`` or ``{case}.nii`` in ``folder`` (no glob: case names may hold ``*`` or ``[``)."""
    for ending in (".nii.gz", ".nii"):
        p = Path(folder) / f"{case}{ending}"
        if p.is_file():
            return p
    return None


def _image_files(images: str | Path) -> dict[str, Path]:
    from .inference.predictor import find_cases

    return {case: files[0] for case, files in find_cases(images).items()}


def segmentation_report(images: str | Path, pred: str | Path, gt: str | Path, out: str | Path,
                        classes=None, max_cases: int = 12, title: str = "ahnet segmentation report") -> Path:
    """Evaluate ``pred`` against ``gt`` and write the HTML report to ``out``."""
    from .evaluation.segmentation import evaluate_segmentation

    result = evaluate_segmentation(pred, gt, classes=classes, progress=False)
    names = list(result.dice_global)
    sections = ["<h2>Dice (§4.2)</h2>",
                _table([["Dice global", *[result.dice_global[n] for n in names]],
                        ["Dice per case", *[result.dice_per_case[n] for n in names]]], ["", *names]),
                "<h2>Per case</h2>",
                _table([[case, *[scores[n] for n in names]] for case, scores in result.cases.items()], ["case", *names])]
    files = _image_files(images)
    for case in list(result.cases)[:max_cases]:
        gt_file, pred_file = _case_file(gt, case), _case_file(pred, case)
        if case in files and gt_file and pred_file:
            sections.append(f"<h3>{html.escape(case)}</h3><img alt='{html.escape(case)}' src='"
                            f"{segmentation_views(case, files[case], gt_file, pred_file)}'>")
    return _write(Path(out), _page(title, sections))


def detection_report(pred: str | Path, boxes_json: str | Path, out: str | Path, max_cases: int = 12,
                     detections_per_case: int = 5, title: str = "ahnet detection report") -> Path:
    """FROC of ``pred/detections.csv`` against ``boxes_json`` and MIPs of ``pred/*_heatmap.nii.gz``."""
    from .evaluation.detection import FROCResult, froc, plot_froc, read_boxes_json, read_detections_csv

    pred = Path(pred)
    detections = read_detections_csv(pred / "detections.csv")
    boxes = read_boxes_json(boxes_json)
    result: FROCResult = froc(detections, boxes)
    with tempfile.TemporaryDirectory() as tmp:
        plot_froc(result, Path(tmp) / "froc.png")
        curve = "data:image/png;base64," + base64.b64encode((Path(tmp) / "froc.png").read_bytes()).decode()
    sections = [f"<h2>FROC (§4.1): {result.lesions} lesions in {result.volumes} volumes</h2>",
                _table([["TPR", *result.froc.values()]], ["FP / volume", *result.froc.keys()]),
                f"<img alt='FROC curve' src='{curve}'>", "<h2>Per case</h2>"]
    by_case: dict[str, list] = {}
    for d in sorted(detections, key=lambda d: -d.score):
        by_case.setdefault(d.case, []).append((d.x, d.y, d.z))
    for case in sorted(boxes)[:max_cases]:
        heatmap = pred / f"{case}_heatmap.nii.gz"
        if heatmap.is_file():
            image = detection_views(case, heatmap, boxes[case], by_case.get(case, [])[:detections_per_case])
            sections.append(f"<h3>{html.escape(case)}</h3><img alt='{html.escape(case)}' src='{image}'>")
    return _write(Path(out), _page(title, sections))

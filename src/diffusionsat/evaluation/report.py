"""Report files people can read: ``report.json``, ``report.md`` and real-vs-generated grids."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

from ..fileio import atomic_path
from .dataset import EvalRecord

logger = logging.getLogger(__name__)

GRID_COLUMNS = 8
GRID_CELL = 96


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def versus_baselines(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per metric and model row: the baseline rows it beats and those that beat it (or tie).

    ``clear`` says whether the two 95 % intervals are apart; without intervals (or when they
    overlap) the order is within the sampling spread. Missing values are left out.
    """
    roles = {r["name"]: r["role"] for r in report["rows"]}
    models = [n for n, role in roles.items() if role == "model"]
    baselines = [n for n, role in roles.items() if role == "baseline"]
    out: dict[str, dict[str, Any]] = {}
    for metric, table in report["metrics"].items():
        higher = table["better"] == "higher"
        for model in models:
            m = table["rows"].get(model)
            if m is None or m["value"] is None:
                continue
            entry: dict[str, Any] = {"beats": [], "beaten_by": [], "ties": []}
            for name in baselines:
                b = table["rows"].get(name)
                if b is None or b["value"] is None:
                    continue
                intervals = None not in (m["low"], m["high"], b["low"], b["high"])
                if b["value"] == m["value"]:
                    entry["ties"].append({"row": name, "value": b["value"]})
                    continue
                wins = b["value"] > m["value"] if higher else b["value"] < m["value"]
                first, second = (b, m) if wins == higher else (m, b)  # first: the row with the higher value
                clear = intervals and first["low"] > second["high"]
                entry["beaten_by" if wins else "beats"].append({"row": name, "value": b["value"], "clear": bool(clear)})
            if any(entry.values()):
                out.setdefault(metric, {})[model] = {"value": m["value"], **entry}
    return out


def _versus_lines(report: dict[str, Any]) -> list[str]:
    versus = report.get("versus_baselines") or {}
    if not versus:
        return []
    lines = ["", "## Model against the baselines", "",
             "Per metric, the baseline rows each model beats and those that beat it (\\* = the 95 % intervals "
             "are apart; otherwise the order is within the sampling spread).", ""]
    for metric, models in versus.items():
        better = report["metrics"][metric]["better"]
        for model, entry in models.items():
            def names(items: list[dict[str, Any]]) -> str:
                return ", ".join(f"{i['row']} ({_fmt(i['value'])}{'*' if i.get('clear') else ''})" for i in items)

            parts = [f"- `{metric}` ({better} is better), {model} {_fmt(entry['value'])}:"]
            if entry["beaten_by"]:
                parts.append(f"**beaten by {names(entry['beaten_by'])}**;")
            if entry["beats"]:
                parts.append(f"beats {names(entry['beats'])};")
            if entry["ties"]:
                parts.append(f"ties {names(entry['ties'])};")
            lines.append(" ".join(parts).rstrip(";"))
    return lines


def _generation_line(generation: dict[str, Any] | None) -> list[str]:
    """How the model rows were sampled (nothing when the images were given with --generated)."""
    if not generation:
        return []
    line = f"- generated with {generation['steps']} steps, guidance {generation['guidance_scale']:g}"
    if generation.get("metadata_guidance_scale") is not None:
        line += f", metadata guidance {generation['metadata_guidance_scale']:g}"
    if generation.get("anchored_guidance") is False:
        line += ", all-unknown negative (--no-anchored-guidance)"
    if generation.get("scheduler") is not None:
        line += f", scheduler {generation['scheduler']}"
    return [line]


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: what was compared, which networks ran, and one table per metric."""
    lines = [
        f"# diffusionsat evaluation — task `{report['task']}`",
        "",
        f"- data: `{report['data']}` ({report['num_records']} records, images compared at "
        f"{report['image_size'][1]}x{report['image_size'][0]} px), seed {report['seed']}",
        f"- created {report['created']} with diffusionsat {report['diffusionsat_version']}",
        *_generation_line(report.get("generation")),
        "",
        "## Rows",
        "",
        "| row | role | what it is |",
        "|---|---|---|",
    ]
    lines += [f"| {r['name']} | {r['role']} | {r['description']} |" for r in report["rows"]]
    lines += ["", "## Feature networks", ""]
    for name, status in report["networks"].items():
        text = f"available ({status['path']})" if status["available"] else f"**not available** — {status['reason']}"
        lines.append(f"- {name}: {text}")
    summary = report.get("classification_summary")
    if summary:
        lines += ["", "## Class recognition, averaged over classes", "",
                  f"Mean over the {summary['num_classes']} target classes of each class's recognition rate by the domain "
                  f"encoder (every class counts once); real images ({summary['reference_row']} row): "
                  f"**{_fmt(summary['real_class_mean'])}**.", ""]
        for row, entry in summary["rows"].items():
            if row == summary["reference_row"]:
                continue
            text = f"- {row}: **{_fmt(entry['class_mean'])}**"
            if entry["ratio_to_real"] is not None:
                text += f" = **{_pct(entry['ratio_to_real'])}** of the real images' rate, averaged over classes"
                if entry["ratio_low"] is not None:
                    text += f" (95 % interval {_pct(entry['ratio_low'])}–{_pct(entry['ratio_high'])})"
            lines.append(text)
    lines += _versus_lines(report)
    lines += ["", "## Metrics", "",
              "Each value: estimate [95 % interval]; std = per-image spread (KID/IS: over subsets; FID: bootstrap); "
              "n = images per row.", ""]
    for name, table in report["metrics"].items():
        lines += [f"### {name} ({table['better']} is better)", "", table["description"], "",
                  "| row | value | 95% interval | std | n | note |", "|---|---|---|---|---|---|"]
        for row, est in table["rows"].items():
            interval = "—" if est["low"] is None else f"[{_fmt(est['low'])}, {_fmt(est['high'])}]"
            lines.append(f"| {row} | {_fmt(est['value'])} | {interval} | {_fmt(est['std'])} | {est['n']} | {est['note'] or ''} |")
        lines.append("")
    if report.get("per_condition"):
        rows = [r["name"] for r in report["rows"]]
        lines += ["## Classification score per condition", "", "| condition | records | " + " | ".join(rows) + " |",
                  "|---|---|" + "---|" * len(rows)]
        for cond, entry in report["per_condition"].items():
            scores = [_fmt(entry["classification_score"].get(r)) for r in rows]
            lines.append(f"| {cond} | {entry['num_records']} | " + " | ".join(scores) + " |")
        if summary:
            means = [_fmt(summary["rows"].get(r, {}).get("class_mean")) for r in rows]
            ratios = [_pct(summary["rows"].get(r, {}).get("ratio_to_real")) for r in rows]
            lines.append(f"| **mean over classes** | {summary['num_classes']} classes | " + " | ".join(means) + " |")
            lines.append("| **ratio to real** | | " + " | ".join(ratios) + " |")
        lines.append("")
    if report.get("grids"):
        lines += ["## Samples (top row real, then one row per model)", ""]
        lines += [f"![{g}]({g})" for g in report["grids"]]
        lines.append("")
    return "\n".join(lines)


def _to_pil(image: torch.Tensor) -> PIL.Image.Image:
    arr = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    return PIL.Image.fromarray(arr).resize((GRID_CELL, GRID_CELL), PIL.Image.NEAREST)


def grid_image(rows: list[tuple[str, torch.Tensor]]) -> PIL.Image.Image:
    """One labelled row of up to ``GRID_COLUMNS`` images per (label, images)."""
    label_w = 110
    cols = max(len(images) for _, images in rows)
    canvas = PIL.Image.new("RGB", (label_w + cols * (GRID_CELL + 2), len(rows) * (GRID_CELL + 2)), "white")
    draw = PIL.ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        y = r * (GRID_CELL + 2)
        draw.text((4, y + GRID_CELL // 2 - 6), label[:16], fill="black")
        for c, image in enumerate(images):
            canvas.paste(_to_pil(image), (label_w + c * (GRID_CELL + 2), y))
    return canvas


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "all"


def write_report(
    report: dict[str, Any], out: Path, records: list[EvalRecord], real: torch.Tensor, candidates: list, conditions: list[str],
    overwrite: bool = False,
) -> list[str]:
    """Write grids (real row, then each model row, per condition), ``report.json`` and ``report.md``."""
    grids = []
    models = [c for c in candidates if c.role == "model"]
    for cond in sorted(set(conditions)):
        idx = [i for i, c in enumerate(conditions) if c == cond][:GRID_COLUMNS]
        rows = [("real", real[idx])] + [(c.name, c.images[idx]) for c in models]
        name = f"grid_{_slug(cond)}.png"
        with atomic_path(out / name, overwrite=overwrite) as tmp:
            grid_image(rows).save(tmp, format="PNG")
        grids.append(name)
    report["grids"] = grids
    with atomic_path(out / "report.json", overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    with atomic_path(out / "report.md", overwrite=overwrite) as tmp:
        tmp.write_text(markdown(report), encoding="utf-8")
    logger.info("wrote %s", out / "report.md")
    return grids

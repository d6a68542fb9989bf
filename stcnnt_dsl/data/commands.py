"""The text the data commands print: `stcnnt data inspect`, `stcnnt evaluate`,
`stcnnt predict` (the parsers live in `stcnnt_dsl.cli`; the work in this package)."""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate_text", "inspect_text", "predict_text"]


def _range(summary: dict[str, list[float]]) -> str:
    def fmt(values: list[float]) -> str:
        return " x ".join(f"{v:g}" for v in values)

    return f"median {fmt(summary['median'])} (min {fmt(summary['min'])}, max {fmt(summary['max'])})"


def inspect_text(fp: dict[str, Any], root: str) -> str:
    """The fingerprint as a person reads it."""
    lines = [
        f"{root}: {fp['layout']} data set, {fp['cases']} cases, task {fp['task']}",
        f"channels: {', '.join(fp['channels'])}",
        f"shape [T, H, W]: {_range(fp['shape'])}",
        f"spacing [t, h, w]: {_range(fp['spacing'])}",
    ]
    what = "cases" if fp["task"] == "classify" else "voxel frequency"
    if fp["classes"]:
        classes = ", ".join(
            f"{name} {value}" if fp["task"] == "classify" else f"{name} {value:.4f}"
            for name, value in fp["classes"].items()
        )
        lines.append(f"classes ({what}): {classes}")
    for item in fp["intensity"]:
        lines.append(
            f"intensity {item['channel']}: median {item['median']:g}, mean {item['mean']:g}, "
            f"std {item['std']:g}, 0.5-99.5% {item['p00_5']:g}..{item['p99_5']:g}"
        )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def evaluate_text(report: dict[str, Any]) -> str:
    """One line per case and head, then the means."""
    lines = [f"{report['checkpoint']} on {report['dataset']} ({report['cases']} cases)"]
    for row in report["per_case"]:
        parts = []
        for name, head in report["heads"].items():
            scores = row.get(name, {})
            if head["task"] == "segmentation":
                parts.append(f"{name}: dice {_fmt(scores['dice'])} hd95 {_fmt(scores['hd95'])}")
            elif head["task"] == "classification":
                parts.append(f"{name}: label {scores['label']} predicted {scores['predicted']}")
            else:
                parts.append(f"{name}: psnr {_fmt(scores['psnr'])} ssim {_fmt(scores['ssim'])}")
        lines.append(f"  {row['case']}: " + "; ".join(parts))
    for name, head in report["heads"].items():
        means = ", ".join(
            f"{k} {_fmt(v)}" for k, v in head.items() if k not in ("task", "dice_per_class")
        )
        lines.append(f"mean {name} ({head['task']}): {means}")
        if head.get("dice_per_class"):
            per = ", ".join(f"{k} {_fmt(v)}" for k, v in head["dice_per_class"].items())
            lines.append(f"  dice per class: {per}")
    return "\n".join(lines)


def predict_text(result: dict[str, Any]) -> str:
    lines = [f"{item['input']} -> {', '.join(item['outputs'])}" for item in result["files"]]
    if "csv" in result:
        lines.append(f"classes -> {result['csv']}")
    return "\n".join(lines)

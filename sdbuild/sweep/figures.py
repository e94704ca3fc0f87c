"""The sweep's pictures: sweep-report.png (UNet size against PSNR) and sweep-previews.png (one
image per successful variant, same prompt and seed), drawn with matplotlib off screen."""

from __future__ import annotations

import textwrap
from pathlib import Path

from sdbuild.sweep.report import VariantRow

PLOT_FILE = "sweep-report.png"
PREVIEWS_FILE = "sweep-previews.png"
# The runner needs these to turn a prompt into an image.
PREVIEW_COMPONENTS = ("text_encoder", "unet", "vae_decoder")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on build machines
    import matplotlib.pyplot as plt

    return plt


def _plotted_component(rows: list[VariantRow]) -> str | None:
    built = [r for r in rows if r.ok and r.component_mb]
    if not built:
        return None
    return "unet" if all("unet" in r.component_mb for r in built) else next(iter(built[0].component_mb))


def write_plot(rows: list[VariantRow], path: Path) -> None:
    plt = _pyplot()
    component = _plotted_component(rows)
    failed = [r for r in rows if not r.ok]
    fig, (ax, side) = plt.subplots(1, 2, figsize=(11, 5), gridspec_kw={"width_ratios": [3, 2]})
    if component is not None:
        points = [r for r in rows if r.ok and component in r.component_mb]
        for row in points:
            x = row.component_mb[component]
            y = row.component_psnr_db.get(component, float("nan"))
            ax.scatter([x], [y])
            ax.annotate(f"{row.record.num}: {row.label}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel(f"{component} size (MB)")
        ax.set_ylabel(f"{component} PSNR (dB, lowest output)")
        ax.set_title(f"size against quality ({len(points)} built)")
        ax.grid(True, alpha=0.3)
    else:
        ax.text(0.5, 0.5, "no variant was built", ha="center", va="center")
        ax.set_axis_off()
    side.set_axis_off()
    lines = [f"Failed variants ({len(failed)}):"] if failed else ["No variant failed."]
    for row in failed:
        lines += textwrap.wrap(f"{row.record.num}: {row.label}: {row.record.reason}", 50) + [""]
    side.text(0, 1, "\n".join(lines), va="top", fontsize=8, family="monospace")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_previews(rows: list[VariantRow], path: Path, *, prompt: str, seed: int, steps: int) -> None:
    """Render ``prompt`` with ``seed`` through every built variant with the runner (Core ML on
    macOS, sdbuild's evaluator elsewhere); a variant that cannot render says why on its tile."""
    from sdbuild.errors import SdbuildError
    from sdbuild.runner.pipeline import GenerationSettings, Pipeline

    plt = _pyplot()
    built = [r for r in rows if r.ok]
    columns = min(4, max(1, len(built)))
    lines = -(-max(1, len(built)) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(3 * columns, 3.3 * lines), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    settings = GenerationSettings(prompt=prompt, seed=seed, steps=steps)
    for ax, row in zip(axes.flat, built):
        missing = [c for c in PREVIEW_COMPONENTS if c not in row.component_mb]
        ax.set_title("\n".join(textwrap.wrap(f"{row.record.num}: {row.label}", 36)), fontsize=8)
        if missing:
            ax.text(0.5, 0.5, f"no preview:\nbuilt without {', '.join(missing)}", ha="center", va="center", fontsize=8)
            continue
        try:
            image = Pipeline(Path(row.record.build_dir), progress=lambda _: None).generate(settings)
        except SdbuildError as exc:
            ax.text(0.5, 0.5, "\n".join(textwrap.wrap(f"no preview: {exc}", 36)), ha="center", va="center", fontsize=7)
            continue
        ax.imshow(image)
    fig.suptitle("\n".join(textwrap.wrap(f'"{prompt}", seed {seed}, {steps} steps', 80)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""Hydra callback: at the end of every multirun, the sweep report in the sweep folder, a summary
table, and a non-zero exit naming each failed variant (conf/build.yaml registers it)."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.experimental.callback import Callback

from sdbuild.sweep.figures import PLOT_FILE, PREVIEWS_FILE, write_plot, write_previews
from sdbuild.sweep.report import CSV_FILE, MARKDOWN_FILE, read_rows, summary, write_csv, write_markdown


class SweepReport(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = read_rows(sweep_dir)
        write_csv(rows, sweep_dir / CSV_FILE)
        write_plot(rows, sweep_dir / PLOT_FILE)
        extra = [f"![UNet size against PSNR]({PLOT_FILE})"]
        if config.sweep.preview:
            print(f"rendering previews of {sum(r.ok for r in rows)} variants ...", file=sys.stderr, flush=True)
            write_previews(rows, sweep_dir / PREVIEWS_FILE, prompt=config.sweep.prompt,
                           seed=config.sweep.seed, steps=config.sweep.steps)
            extra.append(f"![previews]({PREVIEWS_FILE})")
        write_markdown(rows, sweep_dir / MARKDOWN_FILE, extra)
        print("\n" + summary(rows), file=sys.stderr)
        print(f"sweep report: {sweep_dir / MARKDOWN_FILE}", file=sys.stderr, flush=True)
        failed = [r for r in rows if not r.ok]
        if failed:
            print(f"error: {len(failed)} of {len(rows)} variants failed:", file=sys.stderr)
            for row in failed:
                print(f"  variant {row.record.num} ({row.label}): {row.record.reason}", file=sys.stderr)
            # Hydra passes SystemExit through (it catches Exception only): the sweep exits 1.
            sys.exit(1)

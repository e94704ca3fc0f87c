"""The sweep report's rows and its table files (sweep-report.csv, sweep-report.md).

Every value comes from what was recorded when each variant was built (its variant record, the
build's manifest.json and build-info.json), never from the clock of the run that writes the
report: re-running a finished sweep rebuilds nothing and writes the same CSV bytes.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from sdbuild.contract import ALL_COMPONENTS
from sdbuild.manifest import BUILD_INFO_FILE, Manifest, read_manifest
from sdbuild.progress import format_table
from sdbuild.sweep.variant import RECORD_FILE, VariantRecord

CSV_FILE = "sweep-report.csv"
MARKDOWN_FILE = "sweep-report.md"
# A record still "running" when the sweep ends: the job supervising the build died with it.
JOB_LOST = "its launcher job stopped before the build finished (worker killed or timed out)"


@dataclass
class VariantRow:
    record: VariantRecord
    component_mb: dict[str, float] = field(default_factory=dict)
    component_psnr_db: dict[str, float] = field(default_factory=dict)
    avg_bits: float | None = None  # average bits per weight over every component's weights
    seconds: float | None = None
    cache_hits: str = ""  # "hits/lookups" of the stage cache when it was built
    label: str = ""  # the overrides that set this variant apart from the others

    @property
    def ok(self) -> bool:
        return self.record.status == "ok"


def read_rows(sweep_dir: Path) -> list[VariantRow]:
    """One row per variant of the sweep, in job order."""
    records = sorted((VariantRecord.read(path.parent) for path in sweep_dir.glob(f"*/{RECORD_FILE}")),
                     key=lambda r: r.num)
    shared = set.intersection(*(set(r.overrides) for r in records)) if len(records) > 1 else set()
    rows = [_row(record) for record in records]
    for row in rows:
        row.label = " ".join(o for o in row.record.overrides if o not in shared) or "(recipe as is)"
    return rows


def _row(record: VariantRecord) -> VariantRow:
    if record.status == "running":
        record.status, record.reason = "failed", JOB_LOST
    row = VariantRow(record)
    if not row.ok:
        return row
    build_dir = Path(record.build_dir)
    manifest: Manifest = read_manifest(build_dir)
    weights = bits = 0.0
    for name, info in manifest.components.items():
        row.component_mb[name] = info.bytes / 1e6
        psnr = [o.psnr_db for o in info.verification.outputs]
        if psnr:
            row.component_psnr_db[name] = min(psnr)
        count = info.compression.weight_bytes_before / 2  # float16 weights before compression
        weights += count
        bits += count * info.compression.avg_bits_per_weight
    row.avg_bits = bits / weights if weights else None
    build_info = json.loads((build_dir / BUILD_INFO_FILE).read_text())
    row.seconds = build_info.get("seconds")
    if "cache_lookups" in build_info:
        row.cache_hits = f"{build_info['cache_hits']}/{build_info['cache_lookups']}"
    return row


def _components(rows: list[VariantRow]) -> list[str]:
    present = {name for row in rows for name in row.component_mb}
    return [c for c in ALL_COMPONENTS if c in present]


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table(rows: list[VariantRow]) -> tuple[list[str], list[list[str]]]:
    components = _components(rows)
    headers = ["variant", "overrides", "build_id", "status",
               *(f"{c}_mb" for c in components), "avg_bits",
               *(f"{c}_psnr_db" for c in components), "seconds", "cache_hits", "reason"]
    body = [
        [str(row.record.num), " ".join(row.record.overrides), row.record.build_id, row.record.status,
         *(_number(row.component_mb.get(c), 3) for c in components), _number(row.avg_bits, 2),
         *(_number(row.component_psnr_db.get(c), 2) for c in components),
         _number(row.seconds, 1), row.cache_hits, row.record.reason]
        for row in rows
    ]
    return headers, body


def write_csv(rows: list[VariantRow], path: Path) -> None:
    headers, body = table(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(body)
    path.write_text(out.getvalue())


def write_markdown(rows: list[VariantRow], path: Path, extra: list[str]) -> None:
    headers, body = table(rows)
    keep = [i for i, h in enumerate(headers) if h != "reason"]
    lines = [
        "# Sweep report",
        "",
        f"{sum(r.ok for r in rows)} of {len(rows)} variants built. Sizes in MB, PSNR in dB against "
        "each component's PyTorch module (lowest output), seconds and cache hits as recorded "
        "when the variant was built.",
        "",
        "| " + " | ".join(headers[i] for i in keep) + " |",
        "|" + "---|" * len(keep),
        *("| " + " | ".join(cells[i].replace("|", "\\|") for i in keep) + " |" for cells in body),
    ]
    failed = [r for r in rows if not r.ok]
    if failed:
        lines += ["", "## Failed variants", ""]
        lines += [f"- `{r.label}`: {r.record.reason}" for r in failed]
    lines += ["", *extra] if extra else []
    path.write_text("\n".join(lines) + "\n")


def summary(rows: list[VariantRow]) -> str:
    """The table printed at the end of a sweep: what sets each variant apart, and how it went."""
    return format_table(
        ["variant", "overrides", "status", "unet MB", "unet PSNR dB", "seconds"],
        [[str(r.record.num), r.label, r.record.status, _number(r.component_mb.get("unet"), 3),
          _number(r.component_psnr_db.get("unet"), 2), _number(r.seconds, 1)] for r in rows],
    )

"""A tiny Core ML program, and a script that converts and saves it in a fresh process.

Run as ``python pkgio_child.py OUT_DIR FAKE_DATE``: converts the model with coremltools' clock
faked to FAKE_DATE (YYYY-MM-DD), then writes OUT_DIR/raw.mlpackage (coremltools' own save) and
OUT_DIR/model.mlpackage (sdbuild's save_package).
"""

from __future__ import annotations

import datetime
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared clock faker
from fake_clock_build import fake_coremltools_date  # noqa: E402

USER_METADATA = {"sdbuild.recipe": "tiny-test", "com.github.apple.ml-stable-diffusion.version": "sdbuild-test"}
INPUT_SHAPE = (1, 4, 8, 8)


def build_tiny_model():
    """Conv, attention-like matmuls, layer norm and GELU: enough ops, maps and weights to expose
    ordering nondeterminism, small enough to convert in about a second."""
    import torch

    from sdbuild.quiet import import_coremltools

    ct = import_coremltools()

    class TinyBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 16, 3, padding=1)
            self.norm = torch.nn.LayerNorm(16)
            self.qkv = torch.nn.Linear(16, 48)
            self.out = torch.nn.Linear(16, 4)

        def forward(self, x):
            h = self.conv(x).flatten(2).transpose(1, 2)  # (B, 64, 16)
            q, k, v = self.qkv(self.norm(h)).chunk(3, dim=-1)
            attention = torch.softmax(q @ k.transpose(1, 2) / 4.0, dim=-1)
            return self.out(torch.nn.functional.gelu(attention @ v)).transpose(1, 2).reshape(x.shape)

    torch.manual_seed(0)
    example = torch.randn(INPUT_SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(TinyBlock().eval(), example)
    return ct.convert(
        traced,
        inputs=[ct.TensorType(name="sample", shape=INPUT_SHAPE)],
        outputs=[ct.TensorType(name="noise_pred")],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS16,
        skip_model_load=True,
    )


def main(out_dir: Path, fake_date: str) -> None:
    from sdbuild.package_io import save_package

    fake_coremltools_date(datetime.date.fromisoformat(fake_date))
    model = build_tiny_model()
    model.save(str(out_dir / "raw.mlpackage"))
    save_package(model, out_dir / "model.mlpackage", metadata=USER_METADATA)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])

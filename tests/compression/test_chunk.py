"""Chunking after compression: contract names, balanced weights, float32 boundaries, same outputs."""

from __future__ import annotations


import pytest

from sdbuild.config.compression import ChunkingConfig, QuantizationConfig
from sdbuild.contract import package_file_name
from sdbuild.errors import SdbuildError
from sdbuild.stages.chunk import chunk, plan_chunks
from sdbuild.stages.verify import chunked_outputs, load_backend, lowest_psnr

from .conftest import TEST_WEIGHT_THRESHOLD, program_summary

MODEL_ID = "test/tiny-sd21-base"
TWO = ChunkingConfig(enabled=True)


def chunks_psnr(whole, folder, infos, inputs) -> float:
    """The chunk pipeline (as the verify stage and the runner run it) vs the whole model."""
    return lowest_psnr(load_backend("evaluator", whole).predict(inputs), chunked_outputs(folder, infos, inputs))


@pytest.fixture(scope="module")
def float_chunks(unet_ios16, tmp_path_factory):
    out = tmp_path_factory.mktemp("float-chunks")
    return out, chunk(unet_ios16, TWO, out, MODEL_ID, "unet")


def test_two_chunks_named_by_the_contract_with_the_unet_interface_at_the_ends(float_chunks, tiny_interface):
    out, infos = float_chunks
    assert [i.file for i in infos] == [package_file_name(MODEL_ID, "unet", chunk=n) for n in (1, 2)]
    assert all((out / i.file).is_dir() for i in infos)
    first, second = infos
    unet_inputs = [t.as_dict() for t in tiny_interface.inputs]
    first_io, second_io = first.interface.model_dump(), second.interface.model_dump()
    assert first_io["inputs"] == unet_inputs, "chunk 1 takes the UNet's inputs, unchanged"
    assert second_io["outputs"] == [t.as_dict() for t in tiny_interface.outputs]
    crossing = {t["name"] for t in first_io["outputs"]}
    assert crossing and all(t["dtype"] == "float32" for t in first_io["outputs"])
    from_first = [t for t in second_io["inputs"] if t["name"] in crossing]
    assert from_first and all(t["dtype"] == "float32" for t in from_first)
    # Chunk 2 reads nothing but chunk 1's outputs and the UNet's own inputs.
    assert {t["name"] for t in second_io["inputs"]} <= crossing | {t["name"] for t in unet_inputs}


def test_chunks_split_the_weights_about_evenly(unet_ios16, float_chunks):
    _, infos = float_chunks
    total = sum(w.storage_bits for w in program_summary(unet_ios16)[0]) / 8
    sizes = [i.weight_bytes for i in infos]
    assert max(sizes) / min(sizes) < 1.25
    assert total <= sum(sizes) < 1.02 * total, "only a few shared constants are stored twice"


def test_chunk_pipeline_matches_the_whole_model(unet_ios16, float_chunks, tiny_inputs):
    out, infos = float_chunks
    assert chunks_psnr(unet_ios16, out, infos, tiny_inputs) >= 35.0


def test_three_chunks_also_match(unet_ios16, tmp_path, tiny_inputs):
    infos = chunk(unet_ios16, ChunkingConfig(enabled=True, num_chunks=3), tmp_path, MODEL_ID, "unet")
    assert [i.file for i in infos][-1].endswith("_chunk3.mlpackage")
    sizes = [i.weight_bytes for i in infos]
    assert max(sizes) / min(sizes) < 1.4
    assert chunks_psnr(unet_ios16, tmp_path, infos, tiny_inputs) >= 35.0


@pytest.mark.parametrize("name,target,constexpr", [
    ("kmeans4", "iOS16", "constexpr_lut_to_dense"),
    ("blockwise_int4", "iOS18", "constexpr_blockwise_shift_scale"),
])
def test_chunks_of_a_compressed_model_stay_compressed(name, target, constexpr, unet_ios16, unet_ios18, compressed,
                                                      tmp_path, tiny_inputs):
    mode = {"kmeans4": dict(mode="kmeans", nbits=4), "blockwise_int4": dict(mode="blockwise_int4")}[name]
    source = unet_ios18 if target == "iOS18" else unet_ios16
    package, report = compressed(source, QuantizationConfig(weight_threshold=TEST_WEIGHT_THRESHOLD, **mode), target)
    infos = chunk(package, TWO, tmp_path, MODEL_ID, "unet")
    paths = [tmp_path / i.file for i in infos]
    whole = program_summary(package)[1][constexpr]
    per_chunk = [program_summary(p) for p in paths]
    assert whole > 0 and sum(ops[constexpr] for _, ops, _ in per_chunk) >= whole
    for weights, ops, _ in per_chunk:
        assert ops[constexpr] > 0
        assert {w.element_bits for w in weights if w.compressed} == {4}
    assert sum(i.weight_bytes for i in infos) < 1.02 * report.weight_bytes_after
    assert chunks_psnr(package, tmp_path, infos, tiny_inputs) >= 35.0


def test_a_chunk_over_the_limit_fails_with_the_sizes(unet_ios16, tmp_path):
    cfg = ChunkingConfig(enabled=True, num_chunks=2, max_chunk_weight_mb=2.0)  # the tiny UNet: ~6 MB
    with pytest.raises(SdbuildError, match=r"unet in 2 chunks has \d+\.\d, \d+\.\d MB of weights; the limit is "
                                           r"chunking.max_chunk_weight_mb=2 MB") as caught:
        chunk(unet_ios16, cfg, tmp_path, MODEL_ID, "unet")
    assert "num_chunks" in caught.value.hint
    assert not any(tmp_path.iterdir()), "nothing is written when the plan does not fit"
    plan = plan_chunks(unet_ios16, ChunkingConfig(enabled=True, num_chunks=4, max_chunk_weight_mb=2.0), "unet")
    assert len(plan.weight_bytes) == 4 and max(plan.weight_bytes) < 2 * 2**20


def test_chunking_needs_two_or_more(unet_ios16, tmp_path):
    with pytest.raises(SdbuildError, match="num_chunks=1 makes no chunks"):
        chunk(unet_ios16, ChunkingConfig(enabled=True, num_chunks=1), tmp_path, MODEL_ID, "unet")

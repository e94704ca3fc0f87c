import torch

from sdbuild.evaluator.registry import COMPACT_FROM, Const


def test_a_large_float16_weight_is_held_in_float16_and_handed_out_exactly_as_float32():
    weight = torch.randn(COMPACT_FROM, generator=torch.Generator().manual_seed(0)).half().float()
    const = Const(weight, float16_exact=True)
    assert const.stored.dtype == torch.float16 and const.stored.nbytes == weight.nbytes // 2
    assert const.value.dtype == torch.float32 and torch.equal(const.value, weight)


def test_small_or_not_float16_values_stay_as_they_are():
    small = torch.ones(COMPACT_FROM - 1)
    assert Const(small, float16_exact=True).stored is small
    exact_unknown = torch.randn(COMPACT_FROM)  # a float32 weight: halving it would change it
    assert Const(exact_unknown).stored is exact_unknown and Const(exact_unknown).value is exact_unknown
    assert Const("same").value == "same"

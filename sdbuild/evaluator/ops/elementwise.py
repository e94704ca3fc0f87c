"""Element-wise ops: unary math, binary arithmetic and comparisons, activations, cast, select."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdbuild.evaluator.ops.layout import per_channel
from sdbuild.evaluator.registry import Args, register


def _unary(op_type: str, fn) -> None:
    register(op_type)(lambda a: fn(a.tensor("x")))


def _float_unary(op_type: str, fn) -> None:
    """Math functions are defined on floats; integer inputs are computed in float."""
    register(op_type)(lambda a: fn(_as_float(a.tensor("x"))))


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.float()


for _name, _fn in {
    "abs": torch.abs, "sign": torch.sign, "square": torch.square, "logical_not": torch.logical_not,
    "identity": lambda x: x,
}.items():
    _unary(_name, _fn)

for _name, _fn in {
    "acos": torch.acos, "asin": torch.asin, "atan": torch.atan, "atanh": torch.atanh,
    "ceil": torch.ceil, "floor": torch.floor, "round": torch.round, "cos": torch.cos,
    "cosh": torch.cosh, "sin": torch.sin, "sinh": torch.sinh, "tan": torch.tan,
    "tanh": torch.tanh, "erf": torch.erf, "exp": torch.exp, "exp2": torch.exp2,
    "sqrt": torch.sqrt, "relu": torch.relu, "sigmoid": torch.sigmoid, "silu": F.silu,
    "softplus": F.softplus, "softsign": F.softsign, "relu6": F.relu6,
}.items():
    _float_unary(_name, _fn)


@register("inverse")
def inverse(a: Args) -> torch.Tensor:
    return 1.0 / (a.tensor("x") + a.get("epsilon", 1e-4))


@register("log")
def log(a: Args) -> torch.Tensor:
    return torch.log(a.tensor("x") + a.get("epsilon", 1e-45))


@register("rsqrt")
def rsqrt(a: Args) -> torch.Tensor:
    return torch.rsqrt(a.tensor("x") + a.get("epsilon", 1e-12))


@register("clip")
def clip(a: Args) -> torch.Tensor:
    return torch.clamp(a.tensor("x"), a.get("alpha"), a.get("beta"))


@register("threshold")
def threshold(a: Args) -> torch.Tensor:
    return torch.clamp(a.tensor("x"), min=a.get("alpha"))


@register("cast")
def cast(a: Args) -> torch.Tensor:
    # The executor converts every result to its declared dtype (and rounds fp16 storage), which
    # is exactly a cast; float -> int truncates toward zero as numpy's astype does.
    return a.tensor("x")


@register("select")
def select(a: Args) -> torch.Tensor:
    a_val, b_val = _promote(a.tensor("a"), a.tensor("b"))
    return torch.where(a.tensor("cond").bool(), a_val, b_val)


# -- activations ---------------------------------------------------------------------------------


@register("gelu")
def gelu(a: Args) -> torch.Tensor:
    x, mode = a.tensor("x"), a.get("mode", "EXACT")
    if mode == "EXACT":
        return F.gelu(x)
    if mode == "TANH_APPROXIMATION":
        return F.gelu(x, approximate="tanh")
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    raise a.unsupported(f"mode {mode}")


@register("softmax")
def softmax(a: Args) -> torch.Tensor:
    return torch.softmax(a.tensor("x"), dim=a.get("axis", -1))


@register("elu")
def elu(a: Args) -> torch.Tensor:
    x, alpha = a.tensor("x"), a.get("alpha", 1.0)
    return torch.where(x > 0, x, alpha * torch.expm1(x))


@register("leaky_relu")
def leaky_relu(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    return torch.where(x >= 0, x, a.get("alpha", 0.01) * x)


@register("clamped_relu")
def clamped_relu(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    return torch.clamp(torch.where(x >= 0, x, a.get("alpha", 0.0) * x), max=a.get("beta", 6.0))


@register("linear_activation")
def linear_activation(a: Args) -> torch.Tensor:
    return a.get("alpha") * a.tensor("x") + a.get("beta", 0.0)


@register("scaled_tanh")
def scaled_tanh(a: Args) -> torch.Tensor:
    return a.get("alpha", 1.0) * torch.tanh(a.get("beta", 1.0) * a.tensor("x"))


@register("sigmoid_hard")
def sigmoid_hard(a: Args) -> torch.Tensor:
    return torch.clamp(a.get("alpha", 0.2) * a.tensor("x") + a.get("beta", 0.5), 0.0, 1.0)


@register("thresholded_relu")
def thresholded_relu(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    return torch.where(x >= a.get("alpha", 1.0), x, torch.zeros_like(x))


@register("prelu")
def prelu(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    alpha = per_channel(a.tensor("alpha"), x.dim())
    return torch.where(x > 0, x, alpha * x)


@register("softplus_parametric")
def softplus_parametric(a: Args) -> torch.Tensor:
    x = a.tensor("x")
    alpha = per_channel(a.tensor("alpha"), x.dim())
    beta = per_channel(a.tensor("beta"), x.dim())
    return alpha * F.softplus(beta * x)


# -- binary ----------------------------------------------------------------------------------------


def _promote(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both operands in one dtype (MIL binary ops take two tensors of the same type)."""
    if x.dtype == y.dtype:
        return x, y
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(dtype)


def _binary(op_type: str, fn) -> None:
    register(op_type)(lambda a: fn(*_promote(a.tensor("x"), a.tensor("y"))))


for _name, _fn in {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "real_div": torch.true_divide,
    "floor_div": torch.floor_divide, "mod": torch.remainder, "pow": torch.pow,
    "maximum": torch.maximum, "minimum": torch.minimum,
    "equal": torch.eq, "not_equal": torch.ne, "greater": torch.gt, "greater_equal": torch.ge,
    "less": torch.lt, "less_equal": torch.le,
    "logical_and": torch.logical_and, "logical_or": torch.logical_or,
    "logical_xor": torch.logical_xor,
}.items():
    _binary(_name, _fn)

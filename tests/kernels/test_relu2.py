"""The squared ReLU (`act = relu2`, Nemotron-H's MLP): the generated expression and the
reference both equal relu(x)², and Hugging Face's ReLUSquaredActivation."""

import torch
import torch.nn.functional as F

from archlang.compiler.ops.elementwise import ACT_CALL
from archlang.kernels import reference


def test_relu2_is_the_squared_relu():
    x = torch.randn(257, dtype=torch.float64) * 3
    expected = torch.where(x > 0, x * x, torch.zeros_like(x))
    generated = eval(ACT_CALL["relu2"].format("x"), {"F": F, "torch": torch, "x": x})
    torch.testing.assert_close(generated, expected, rtol=0, atol=0)
    torch.testing.assert_close(reference.ACTIVATIONS["relu2"](x), expected, rtol=0, atol=0)


def test_relu2_matches_hugging_face():
    from transformers.activations import ACT2FN

    x = torch.randn(4, 33)
    torch.testing.assert_close(reference.ACTIVATIONS["relu2"](x), ACT2FN["relu2"](x), rtol=0, atol=0)

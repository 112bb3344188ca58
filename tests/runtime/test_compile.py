"""torch.compile(fullgraph=True): no graph breaks for dense, MoE, hybrid, MLA and soft-capped
models, and the same outputs (and gradients) as eager."""

import pytest
import torch

from ..conftest import SPECS, build_tiny

CASES = [("tiny_llama.arch", "tiny_llama"), ("tiny_mixtral.arch", "tiny_mixtral"), ("tiny_jamba.arch", "tiny_jamba"),
         ("tiny_deepseek.arch", "tiny_deepseek"), ("tiny_gemma2.arch", "tiny_gemma2"), ("tiny_t5.arch", "tiny_t5")]


@pytest.mark.parametrize("spec,name", CASES)
def test_fullgraph_forward_and_backward(spec, name):
    torch._dynamo.reset()
    model = build_tiny(SPECS / spec, name).train()
    ids = torch.randint(0, 97, (2, 9))
    args = (ids, ids) if name == "tiny_t5" else (ids,)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(*args)
    ref = model(*args)
    torch.testing.assert_close(out, ref)
    out.float().pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref.float().pow(2).mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, msg=n)


def test_inductor_matches_eager():
    torch._dynamo.reset()
    model = build_tiny(SPECS / "tiny_llama.arch", "tiny_llama").eval()
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(ids), model(ids), atol=1e-5, rtol=1e-5)


def test_fullgraph_inference_of_the_hybrid():
    """Without autograd the scan updates its chunk buffer in place: that path compiles too."""
    torch._dynamo.reset()
    model = build_tiny(SPECS / "tiny_jamba.arch", "tiny_jamba").eval()
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(ids), model(ids))

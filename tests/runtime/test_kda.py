"""Kimi Delta Attention: the generalised delta rule with a = -β (α ⊙ k), b = k, k' = β k is KDA's
recurrence (checked against the matrix recurrence written out here and against
flash-linear-attention's naive_recurrent_kda / naive_chunk_kda); the chunked and recurrent forms
agree; the whole layer equals Hugging Face's KimiLinearDeltaAttention (full forward and cached
decode); padding, gradients and the cache size."""

from __future__ import annotations

import pytest
import torch

from archlang import runtime as rt
from archlang.kernels import reference
from archlang.runtime.context import Cache, Context


B, T, H, D = 2, 13, 3, 8
TOL64 = dict(atol=1e-10, rtol=1e-10)
TOL32 = dict(atol=1e-5, rtol=1e-5)


def _inputs(t=T, dtype=torch.float64, seed=0):
    """q, k L2-normalised (as the layer feeds them), v, a per-channel log decay, β, an initial state."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k = (torch.nn.functional.normalize(rand(B, H, t, D), dim=-1) for _ in range(2))
    v = rand(B, H, t, D)
    log_decay = -torch.nn.functional.softplus(rand(B, H, t, D))  # (B, H, T, dk), strong and weak channels
    beta = torch.sigmoid(rand(B, H, t))
    return q, k, v, log_decay, beta, rand(B, H, D, D)


def naive_kda(q, k, v, log_decay, beta, state):
    """KDA as the paper writes it: S_t = (I - β_t k_t k_t^T) Diag(α_t) S_{t-1} + β_t k_t v_t^T, o_t = S_t^T q_t / sqrt(dk)."""
    s, out, eye = state.clone(), [], torch.eye(q.shape[-1], dtype=q.dtype)
    for i in range(q.shape[2]):
        kt, bt = k[:, :, i], beta[:, :, i, None, None]
        s = (eye - bt * kt[..., :, None] * kt[..., None, :]) @ (log_decay[:, :, i, :, None].exp() * s)
        s = s + bt * kt[..., :, None] * v[:, :, i, None, :]
        out.append(torch.einsum("bhkv,bhk->bhv", s, q[:, :, i] * q.shape[-1] ** -0.5))
    return torch.stack(out, dim=2), s


def _generalised(form, q, k, v, log_decay, beta, state, chunk=4):
    """KDA through the generalised delta rule, as runtime/gated_linear.py's KDA calls it."""
    beta = beta[..., None]
    read, write = -beta * log_decay.exp() * k, beta * k
    if form == "recurrent":
        return reference.generalized_delta_recurrent(q, write, v, log_decay, read, k, state, scale=D ** -0.5)
    return reference.generalized_delta_chunked(q, write, v, log_decay, read, k, state, scale=D ** -0.5, chunk=chunk)


@pytest.mark.parametrize("form,chunk", [("recurrent", None), ("chunked", 4), ("chunked", 5), ("chunked", 64)])
def test_the_generalised_delta_rule_is_kda(form, chunk):
    q, k, v, log_decay, beta, state = _inputs()
    expected, expected_state = naive_kda(q, k, v, log_decay, beta, state)
    got, got_state = _generalised(form, q, k, v, log_decay, beta, state, chunk=chunk)
    torch.testing.assert_close(got, expected, **TOL64)
    torch.testing.assert_close(got_state, expected_state, **TOL64)


def test_strong_decays_stay_finite_in_the_chunked_form():
    """Log decays down to about -200 per token (A_log up to log 16 times a large softplus): every
    exponent the chunked form takes is a decay from a later to an earlier position, so nothing overflows."""
    q, k, v, log_decay, beta, state = _inputs()
    log_decay = log_decay * 60
    expected, expected_state = naive_kda(q, k, v, log_decay, beta, state)
    got, got_state = _generalised("chunked", q, k, v, log_decay, beta, state, chunk=8)
    torch.testing.assert_close(got, expected, **TOL64)
    torch.testing.assert_close(got_state, expected_state, **TOL64)


def test_the_algebra_is_not_vacuous():
    """A per-head decay or a decay after the delta step is a different recurrence: the test above tells them apart."""
    q, k, v, log_decay, beta, state = _inputs()
    expected, _ = naive_kda(q, k, v, log_decay, beta, state)
    per_head = log_decay.mean(-1, keepdim=True).expand_as(log_decay)
    assert not torch.allclose(_generalised("recurrent", q, k, v, per_head, beta, state)[0], expected, atol=1e-3)
    beta_ = beta[..., None]
    after = reference.generalized_delta_recurrent(q, beta_ * k, v, log_decay, -beta_ * k, k, state, scale=D ** -0.5)[0]
    assert not torch.allclose(after, expected, atol=1e-3)


fla_kda = pytest.importorskip("fla.ops.kda.naive")


@pytest.mark.parametrize("form", ["recurrent", "chunked"])
def test_matches_flash_linear_attention_naive_kda(form):
    q, k, v, log_decay, beta, state = (x.float() for x in _inputs(t=16))
    to_fla = lambda x: x.transpose(1, 2)  # noqa: E731  (B, T, H, d) and (B, T, H)
    args = (to_fla(q), to_fla(k), to_fla(v), to_fla(log_decay), to_fla(beta))
    if form == "recurrent":
        ref, ref_state = fla_kda.naive_recurrent_kda(*args, initial_state=state, output_final_state=True)
    else:
        ref, ref_state = fla_kda.naive_chunk_kda(*args, initial_state=state, output_final_state=True, chunk_size=8)
    got, got_state = _generalised(form, q, k, v, log_decay, beta, state, chunk=8)
    torch.testing.assert_close(got, to_fla(ref), **TOL32)
    torch.testing.assert_close(got_state, ref_state, **TOL32)


# --- the whole layer against Hugging Face's --------------------------------------------------------

kimi = pytest.importorskip("transformers.models.kimi_linear.modeling_kimi_linear")

HF_CONFIG = dict(hidden_size=32, linear_num_heads=3, linear_head_dim=8, linear_conv_kernel_dim=3, num_hidden_layers=1,
                 layer_types=["linear_attention"], mlp_layer_types=["dense"], rms_norm_eps=1e-5)


def hf_layer_and_ours(chunk=4, form="auto"):
    """A KimiLinearDeltaAttention with every weight moved off its initial value, and a KDALayer with the same weights."""
    torch.manual_seed(3)
    config = kimi.KimiLinearConfig(**HF_CONFIG)
    layer = kimi.KimiLinearDeltaAttention(config, 0).eval()
    with torch.no_grad():  # the bare layer leaves A_log and dt_bias uninitialised (its model's _init_weights fills them)
        for name, p in layer.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name == "o_norm.weight" else 0.0))
        layer.forget_gate.A_log.copy_(torch.empty_like(layer.forget_gate.A_log).uniform_(1, 16).log())
    ours = rt.KDALayer(32, 3, 8, conv_size=3, chunk=chunk, form=form, norm_eps=1e-5).eval()
    names = {"q_proj": "q_proj.weight", "k_proj": "k_proj.weight", "v_proj": "v_proj.weight",
             "conv_weight": "conv1d.weight", "f_a_proj": "forget_gate.f_a_proj.weight",
             "f_b_proj": "forget_gate.f_b_proj.weight", "dt_bias": "forget_gate.dt_bias",
             "A_log": "forget_gate.A_log", "b_proj": "b_proj.weight", "g_a_proj": "g_a_proj.weight",
             "g_b_proj": "g_b_proj.weight", "norm_weight": "o_norm.weight", "out_proj": "o_proj.weight"}
    theirs = dict(layer.named_parameters())
    assert set(theirs) == set(names.values())  # every HF weight has its place
    with torch.no_grad():
        for mine, hf in names.items():
            getattr(ours, mine).copy_(theirs[hf].reshape(getattr(ours, mine).shape))
    return config, layer, ours


def _ctx(t, cache=None, start=0, mask=None):
    return Context(positions=torch.arange(start, start + t), cache=cache, attention_mask=mask)


@pytest.mark.parametrize("form", ["auto", "recurrent"])
def test_matches_the_whole_hf_kimi_delta_attention_layer(form):
    _, layer, ours = hf_layer_and_ours(form=form)
    x = torch.randn(B, T, 32)
    with torch.no_grad():
        expected = layer(x)
        torch.testing.assert_close(ours(x), expected, **TOL32)
        cache = Cache()  # prefill then decode through our cache: still HF's full forward
        steps = [ours(x[:, :9], _ctx(9, cache))] + [ours(x[:, i:i + 1], _ctx(1, cache, i)) for i in range(9, T)]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, **TOL32)


def test_cache_matches_hf_and_continues_its_prefill():
    """HF keeps the last conv_size conv inputs, the runtime conv_size - 1; the states are the same tensor."""
    from transformers import DynamicCache

    config, layer, ours = hf_layer_and_ours()
    x = torch.randn(B, 9, 32)
    with torch.no_grad():
        hf_cache, cache = DynamicCache(config=config), Cache()
        layer(x[:, :8], cache_params=hf_cache)
        ours(x[:, :8], _ctx(8, cache))
        torch.testing.assert_close(cache.get("")["state"], hf_cache.get_recurrent_state(0), **TOL32)
        torch.testing.assert_close(cache.get("")["conv"], hf_cache.get_conv_state(0)[..., 1:], **TOL32)
        torch.testing.assert_close(ours(x[:, 8:], _ctx(1, cache, 8)), layer(x[:, 8:], cache_params=hf_cache), **TOL32)


def test_left_padding_leaves_the_real_tokens_as_alone():
    """A padded prefix neither decays nor writes the state and enters the conv as zeros."""
    _, _, ours = hf_layer_and_ours()
    x = torch.randn(1, 7, 32)
    padded = torch.cat((torch.randn(1, 3, 32), x), dim=1)
    mask = torch.tensor([[0, 0, 0] + [1] * 7])
    with torch.no_grad():
        torch.testing.assert_close(ours(padded, _ctx(10, mask=mask))[:, 3:], ours(x), **TOL32)


def test_gradients_reach_every_parameter():
    _, _, ours = hf_layer_and_ours()
    ours.train()
    ours(torch.randn(B, 9, 32)).square().sum().backward()
    for name, p in ours.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_state_bytes():
    layer = rt.KDALayer(32, 3, 8, conv_size=4)
    assert layer.state_bytes(torch.bfloat16) == 3 * 8 * 8 * 4 + 3 * 24 * 3 * 2

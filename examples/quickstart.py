"""Build a tiny model from a spec, run a forward pass, train a step and generate: the whole
loop on CPU in a few seconds."""

import torch

import archlang

SPEC = """
model quickstart {
    vocab = 256
    d_model = 64
    context = 128
    dtype = fp32
    position = rope(theta = 10000)
    final_norm = rmsnorm(eps = 1e-5)

    block layer {
        norm = rmsnorm(eps = 1e-5)
        attention = gqa(heads = 4, kv_heads = 2)
        ffn = swiglu(hidden = 4 * d_model)
    }

    layers = layer * 2
}
"""

torch.manual_seed(0)
model = archlang.build(SPEC)  # in the spec's dtype (fp32 here); dtype=torch.bfloat16 would override it
ids = torch.randint(0, 256, (2, 16))
logits = model(ids)  # (B, T, vocab)
print("forward:", tuple(logits.shape))

opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1))
loss.backward()
opt.step()
print(f"one training step: loss {loss.item():.3f}")

print("generate:", model.generate(ids[:1, :4], max_new_tokens=8).tolist())

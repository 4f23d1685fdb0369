import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from neat.logprobs import length_normalised, response_logprobs

PAD = 0
# (prompt, response) token ids; responses end with EOS = 2. Total response tokens: 4 + 7 + 1 + 5 = 17.
SEQS = [
    ([5, 6, 7], [8, 9, 10, 2]),
    ([11, 12], [13, 14, 15, 16, 17, 18, 2]),
    ([19, 20, 21, 22, 23, 24], [2]),
    ([25], [26, 27, 28, 29, 2]),
]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
    )
    return LlamaForCausalLM(config).eval()


def batch(side):
    width = max(len(p) + len(r) for p, r in SEQS)
    ids, att, resp = [], [], []
    for p, r in SEQS:
        n_pad = width - len(p) - len(r)
        tok = p + r
        a = [1] * len(tok)
        rm = [0] * len(p) + [1] * len(r)
        if side == "left":
            ids.append([PAD] * n_pad + tok), att.append([0] * n_pad + a), resp.append([0] * n_pad + rm)
        else:
            ids.append(tok + [PAD] * n_pad), att.append(a + [0] * n_pad), resp.append(rm + [0] * n_pad)
    return torch.tensor(ids), torch.tensor(att), torch.tensor(resp)


def positions(att):
    return (att.cumsum(-1) - 1).masked_fill(att == 0, 1)


def naive(model, ids, att, resp):
    """Full logits -> float32 log_softmax over every position -> gather the response tokens."""
    logits = model(input_ids=ids, attention_mask=att, position_ids=positions(att)).logits.float()
    logp = F.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)
    keep = resp[:, 1:].bool()
    return torch.where(keep, logp, torch.zeros_like(logp)).sum(1), keep.sum(1)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("chunk_size", [1024, 3, 1])
def test_matches_naive(model, side, chunk_size):
    ids, att, resp = batch(side)
    with torch.no_grad():
        want, want_n = naive(model, ids, att, resp)
        got, n = response_logprobs(model, ids, att, resp, chunk_size=chunk_size)
    assert n.tolist() == [4, 7, 1, 5] and n.dtype == torch.int64
    assert torch.equal(n, want_n)
    assert got.dtype == torch.float32 and not got.requires_grad
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_left_and_right_padding_agree(model):
    with torch.no_grad():
        left, _ = response_logprobs(model, *batch("left"), chunk_size=5)
        right, _ = response_logprobs(model, *batch("right"), chunk_size=5)
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)


def test_explicit_position_ids(model):
    ids, att, resp = batch("left")
    with torch.no_grad():
        default, _ = response_logprobs(model, ids, att, resp)
        explicit, _ = response_logprobs(model, ids, att, resp, position_ids=positions(att))
    assert torch.equal(default, explicit)


@pytest.mark.parametrize("side", ["left", "right"])
def test_gradients_match_naive(model, side):
    ids, att, resp = batch(side)
    weights = torch.tensor([0.5, -1.0, 2.0, 0.25])

    model.zero_grad()
    want, want_n = naive(model, ids, att, resp)
    (length_normalised(want, want_n) * weights).sum().backward()
    want_grads = {k: p.grad.clone() for k, p in model.named_parameters()}

    model.zero_grad()
    got, n = response_logprobs(model, ids, att, resp, chunk_size=3)  # 17 response tokens -> 6 chunks
    assert got.requires_grad
    (length_normalised(got, n) * weights).sum().backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want_grads[k], atol=1e-5, rtol=1e-4, msg=k)
    model.zero_grad()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # raised inside peft/transformers, not here
def test_peft_lora_model_matches_naive(model):
    peft = pytest.importorskip("peft")
    import copy

    base = copy.deepcopy(model)
    lora = peft.get_peft_model(
        base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    ids, att, resp = batch("right")
    want, _ = naive(lora, ids, att, resp)
    got, _ = response_logprobs(lora, ids, att, resp, chunk_size=4)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # LoRA changes the result, and gradients reach the adapter weights
    with torch.no_grad():
        plain, _ = response_logprobs(model, ids, att, resp)
    assert (got - plain).abs().max() > 1e-4
    got.sum().backward()
    lora_grads = [p.grad for n_, p in lora.named_parameters() if "lora_" in n_]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)


def test_ddp_wrapped_model_goes_through_forward(model, tmp_path):
    # DDP only reduces gradients of graphs built by its own forward(), so the DDP path calls it
    # (single-process gloo group) and must still match the naive values and gradients.
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialised")
    import copy

    model = copy.deepcopy(model)  # DDP registers hooks on the parameters: keep the shared fixture clean
    ids, att, resp = batch("left")
    model.zero_grad()
    want, _ = naive(model, ids, att, resp)
    want.sum().backward()
    want_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        got, _ = response_logprobs(ddp, ids, att, resp, chunk_size=3)
        got.sum().backward()
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want_grads[k], atol=1e-5, rtol=1e-4, msg=k)


def test_no_response_tokens(model):
    ids, att, resp = batch("right")
    got, n = response_logprobs(model, ids, att, torch.zeros_like(resp))
    assert got.tolist() == [0.0] * 4 and n.tolist() == [0] * 4
    assert length_normalised(got, n).tolist() == [0.0] * 4


def test_invalid_response_mask(model):
    ids, att, resp = batch("right")
    bad = resp.clone()
    bad[0, 0] = 1
    with pytest.raises(ValueError, match="token 0"):
        response_logprobs(model, ids, att, bad)
    bad = resp.clone()
    bad[2, -1] = 1  # sequence 2 is padded at the end
    with pytest.raises(ValueError, match="padding"):
        response_logprobs(model, ids, att, bad)


def test_length_normalised():
    s = torch.tensor([-6.0, -3.0, 0.0])
    n = torch.tensor([3, 1, 0])
    assert length_normalised(s, n).tolist() == [-2.0, -3.0, 0.0]


def test_lm_head_stays_float32_under_bf16_autocast(model):
    """Under CPU bf16 autocast the decoder's matmuls run in bf16, but the LM head and log-softmax run in
    float32 on the final hidden states: a bf16 head would round logits (steps of 0.125 at 20)."""
    ids, att, resp = batch("right")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = response_logprobs(model, ids, att, resp)
        hidden = model.model(input_ids=ids, attention_mask=att, position_ids=positions(att)).last_hidden_state
        bf16_head = model.lm_head(hidden)
    assert bf16_head.dtype == torch.bfloat16
    assert (bf16_head.float() - F.linear(hidden.float(), model.lm_head.weight)).abs().max() > 0
    logits = F.linear(hidden.float(), model.lm_head.weight)  # float32 head on the same hidden states
    logp = F.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)
    want = torch.where(resp[:, 1:].bool(), logp, torch.zeros_like(logp)).sum(1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    with torch.no_grad():
        fp32, _ = naive(model, ids, att, resp)
    torch.testing.assert_close(got, fp32, atol=0.1, rtol=0)  # bf16 decoder: close to float32, not equal

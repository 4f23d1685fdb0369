"""Log-probabilities of response tokens under a causal LM, without full-vocabulary log-softmaxes.

``response_logprobs`` runs the decoder once over N (prompt + response) sequences, keeps the final
hidden states only at the positions that predict a response token, and applies the LM head and a
float32 log-softmax to those rows ``chunk_size`` rows at a time. Prompt and padding positions never
reach the LM head. With gradients enabled each chunk is recomputed in the backward pass (activation
checkpointing), so the extra memory is about ``chunk_size x vocab`` floats whatever the number of
response tokens, instead of keeping every chunk's ``[rows, vocab]`` log-softmax alive until backward.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["response_logprobs", "length_normalised"]


def _unwrap(model: nn.Module) -> tuple[nn.Module, bool]:
    """The causal-LM module under DDP / FSDP / peft wrappers, and whether the wrapper must run the forward."""
    from neat.distributed import base_model, is_fsdp

    # peft.PeftModel: the LoRA layers live in place in its base model
    lm, is_ddp = base_model(model), isinstance(model, nn.parallel.DistributedDataParallel)
    # FSDP gathers the root unit's weights (embeddings, LM head) in the root's forward hook, and keeps
    # them gathered until backward: the chunked LM head below then sees full weights.
    return lm, is_ddp or is_fsdp(model)


def _final_hidden_states(
    model: nn.Module, lm: nn.Module, via_forward: bool, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor
) -> Tensor:
    if via_forward:
        # DDP only syncs gradients of a graph built through its own forward() (and FSDP gathers the root's
        # weights there): call it, asking for the
        # hidden states and for the logits of the last position only.
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            output_hidden_states=True,
            logits_to_keep=1,
            return_dict=True,
        )
        return out.hidden_states[-1]  # after the final norm (transformers ties it to last_hidden_state)
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else getattr(lm, "model", None)
    if decoder is None or decoder is lm:
        raise TypeError(f"cannot find the decoder (base model) of {type(lm).__name__}")
    out = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        return_dict=True,
    )
    return out.last_hidden_state


def _logit_postprocessor(lm: nn.Module):
    """Model-specific steps that *ForCausalLM.forward applies after lm_head (those transformers uses)."""
    config = getattr(lm, "config", None)
    softcap = getattr(config, "final_logit_softcapping", None)  # Gemma 2/3/...
    scale = getattr(lm, "logit_scale", None)  # Cohere
    scale = scale if isinstance(scale, (int, float)) else None
    divisor = getattr(config, "logits_scaling", None)  # Granite
    divisor = divisor if isinstance(divisor, (int, float)) and divisor != 1 else None

    def post(logits: Tensor) -> Tensor:
        if scale is not None:
            logits = logits * scale
        if divisor is not None:
            logits = logits / divisor
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return post


def _chunk_logps(head: nn.Module, post, hidden: Tensor, targets: Tensor) -> Tensor:
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        # bf16 autocast: a logit of 20 rounds to steps of 0.125 in bf16; the head runs at its weights' dtype
        with torch.autocast(device, enabled=False):
            weight = getattr(head, "weight", None)
            logits = post(head(hidden.to(weight.dtype) if weight is not None else hidden).float())
    else:
        logits = post(head(hidden).float())
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=1)


def response_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
    *,
    chunk_size: int = 1024,
    position_ids: Tensor | None = None,
    sequence_index: Tensor | None = None,
    num_sequences: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Sum of the log-probs of the response tokens of each sequence, and how many there are.

    Args:
        model: a transformers causal LM (e.g. ``LlamaForCausalLM``), possibly wrapped by peft
            (``PeftModel``) or ``DistributedDataParallel``. Its ``get_decoder()`` must return the
            base model and ``get_output_embeddings()`` the LM head.
        input_ids: ``[N, T]`` prompt + response tokens, left or right padded.
        attention_mask: ``[N, T]``, 1 for real tokens, 0 for padding.
        response_mask: ``[N, T]``, 1 where token t is a scored response token (EOS included); must be
            0 at t = 0 (a token with no predecessor cannot be scored) and on padding.
        chunk_size: number of scored positions sent through the LM head and log-softmax at once.
        position_ids: ``[N, T]``; by default ``cumsum(attention_mask) - 1`` (1 on padding), so that a
            sequence gets the same positions whether it is left or right padded.
        attention_mask (4D form): ``[N, 1, T, T]`` instead of ``[N, T]``, passed to the model as is
            (a custom mask, e.g. the block mask of packed sequences, see ``neat.packing``): bool (True =
            may attend) or additive float (0 / large negative), in the form the model's attention
            implementation takes. ``position_ids`` is then required, and padding is not checked.
        sequence_index: ``[N, T]`` int64; with it, the log-prob of response token ``(n, t)`` is added to
            output slot ``sequence_index[n, t]`` instead of ``n`` (several sequences packed in one row).
            Only read where ``response_mask`` is set.
        num_sequences: number of output slots with ``sequence_index`` (default: its max over the
            response tokens + 1).

    Returns:
        ``(sum_logps, n_tokens)``: float32 ``[N]`` sum over response tokens t of
        ``log p(x_t | x_<t)`` (token t is predicted from position t - 1), and int64 ``[N]`` number of
        response tokens. Differentiable when gradients are enabled; works under ``torch.no_grad``.
    """
    four_d = attention_mask.dim() == 4
    if four_d:
        n, t = input_ids.shape if input_ids.dim() == 2 else (None, None)
        if input_ids.dim() != 2 or tuple(attention_mask.shape) != (n, 1, t, t) or response_mask.shape != input_ids.shape:
            raise ValueError(
                "with a 4D attention mask, input_ids and response_mask must be [N, T] and attention_mask "
                f"[N, 1, T, T], got {tuple(input_ids.shape)}, {tuple(response_mask.shape)} and "
                f"{tuple(attention_mask.shape)}"
            )
        if position_ids is None:
            raise ValueError("a 4D attention mask needs explicit position_ids")
    elif input_ids.dim() != 2 or attention_mask.shape != input_ids.shape or response_mask.shape != input_ids.shape:
        raise ValueError(
            "input_ids, attention_mask and response_mask must share one [N, T] shape, got "
            f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)} and {tuple(response_mask.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if sequence_index is not None and sequence_index.shape != input_ids.shape:
        raise ValueError(f"sequence_index must have shape {tuple(input_ids.shape)}, got {tuple(sequence_index.shape)}")
    response_mask = response_mask.bool()
    if not four_d:
        attention_mask_b = attention_mask.bool()
        if bool((response_mask & ~attention_mask_b).any()):
            raise ValueError("response_mask marks a padding token (attention_mask == 0) as a response token")
    if bool(response_mask[:, 0].any()):
        raise ValueError("response_mask marks token 0 as a response token; it has no preceding token to predict it")
    if position_ids is None:
        position_ids = attention_mask.long().cumsum(-1) - 1
        position_ids = position_ids.masked_fill(~attention_mask_b, 1)

    lm, via_forward = _unwrap(model)
    head = lm.get_output_embeddings()
    if head is None:
        raise TypeError(f"{type(lm).__name__} has no output embeddings (LM head)")
    post = _logit_postprocessor(lm)

    hidden = _final_hidden_states(model, lm, via_forward, input_ids, attention_mask, position_ids)  # [N, T, H]
    # Position t predicts token t + 1: keep the positions whose next token is a response token.
    predicts = response_mask[:, 1:]  # [N, T-1]
    rows, cols = predicts.nonzero(as_tuple=True)
    h = hidden[:, :-1][rows, cols]  # [M, H]
    targets = input_ids[:, 1:][rows, cols]  # [M]

    use_ckpt = torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in head.parameters()))
    pieces = []
    for start in range(0, h.shape[0], chunk_size):
        h_c, t_c = h[start : start + chunk_size], targets[start : start + chunk_size]
        if use_ckpt:
            pieces.append(checkpoint(_chunk_logps, head, post, h_c, t_c, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(head, post, h_c, t_c))
    # No scored token at all: an empty [0] tensor that is still part of the graph.
    token_logps = torch.cat(pieces) if pieces else h.float().sum(dim=1) * 0

    if sequence_index is None:
        n, slots = input_ids.shape[0], rows
        n_tokens = response_mask.sum(dim=1)
    else:
        slots = sequence_index[:, 1:][rows, cols].long()
        n = num_sequences if num_sequences is not None else (int(slots.max()) + 1 if slots.numel() else 0)
        if slots.numel() and (int(slots.min()) < 0 or int(slots.max()) >= n):
            raise ValueError(f"sequence_index of a response token is outside [0, {n})")
        n_tokens = torch.zeros(n, dtype=torch.long, device=input_ids.device).index_add(
            0, slots, torch.ones_like(slots))
    sum_logps = torch.zeros(n, dtype=torch.float32, device=input_ids.device).index_add(0, slots, token_logps)
    return sum_logps, n_tokens


def length_normalised(sum_logps: Tensor, n_tokens: Tensor) -> Tensor:
    """Mean token log-prob: ``sum_logps / max(n_tokens, 1)`` (0 for a sequence with no response token)."""
    return sum_logps / n_tokens.clamp(min=1).to(sum_logps.dtype)

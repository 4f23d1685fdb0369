"""The generation benchmark's split of forward calls into prefills and decode steps."""

from benchmarks.generation_throughput import ForwardClock
from neat.generation import MIN_SHARED_PREFIX, generate, shared_prefix_length
from tests.test_generation import tiny  # noqa: F401  (fixture)


def test_forward_clock_counts_each_engines_prefills_and_decode_steps_then_lets_go(tiny):
    model, tok, prompts = tiny
    real = type(model).forward
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts[:2]]
    shared = shared_prefix_length(encoded)
    assert shared >= MIN_SHARED_PREFIX  # the chat template's start: the lean loop prefills it once
    width = max(map(len, encoded))
    expected = {"hf": (1, 2 * width), "lean": (2, shared + 2 * (width - shared))}  # prefill calls, positions
    for engine in ("hf", "lean"):
        with ForwardClock(type(model)) as clock:
            gens = generate(model, tok, prompts[:2], max_new_tokens=6, batch_size=2, engine=engine,
                            cpu_dtype="float32")
        prefill, decode = clock.totals["prefill"], clock.totals["decode"]
        longest = max(g.n_tokens for gs in gens for g in gs)
        assert (prefill["calls"], prefill["positions"]) == expected[engine]
        assert decode["calls"] >= longest - 1  # a step per new token after the first
        assert decode["positions"] >= decode["calls"] and prefill["seconds"] > 0 and decode["seconds"] > 0
    assert type(model).forward is real

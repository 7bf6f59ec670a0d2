"""Token-level sampling: pure logit filters, samplers with per-row settings, draws."""
from sampling.constraints import Constraint, compile_choices, compile_regex
from sampling.filters import temperature, top_k, top_p
from sampling.sampler import Sampler, prompt_id, rollout_keys, sample


def beam_search(model, prompts, **kwargs):
    """Token-level beam search and diverse (group) beam search: see :func:`engine.beam.beam_search`.

    It drives the model and the KV cache, so it lives in ``engine``; imported here lazily because
    ``engine`` imports ``sampling`` (layers point down).
    """
    from engine.beam import beam_search as search
    return search(model, prompts, **kwargs)


__all__ = ["Constraint", "compile_regex", "compile_choices", "beam_search", "Sampler", "sample", "rollout_keys", "prompt_id", "temperature", "top_k", "top_p"]

"""Token-level sampling: pure logit filters, samplers with per-row settings, draws."""
from sampling.constraints import Constraint, compile_choices, compile_regex
from sampling.filters import temperature, top_k, top_p
from sampling.sampler import Sampler, prompt_id, rollout_keys, sample

__all__ = ["Constraint", "compile_regex", "compile_choices", "Sampler", "sample", "rollout_keys", "prompt_id", "temperature", "top_k", "top_p"]

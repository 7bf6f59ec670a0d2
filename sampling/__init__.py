"""Token-level sampling: pure logit filters, samplers with per-row settings, draws."""
from sampling.filters import temperature, top_k, top_p
from sampling.sampler import Sampler, prompt_id, rollout_keys, sample

__all__ = ["Sampler", "sample", "rollout_keys", "prompt_id", "temperature", "top_k", "top_p"]

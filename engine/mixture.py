"""Logit mixtures across models: the first model is the policy, the others ride along as tracks.

``mix_generate([expert, amateur], prompts, combine="contrastive", ...)`` starts the first model
with the others as language-model tracks (each prefills its prompts into its own KV cache), then
decodes with a :class:`~engine.step.Mixture`: at every step the models' next-token logits are
combined (:mod:`sampling.mixtures`), one token per row is drawn from the result, and every model
consumes it — the same compiled step as any other decode. The recorded ``logprobs`` are those of
the mixture (log-softmax of the combined logits).
"""
from __future__ import annotations

from engine.checks import check_int, check_sampler
from engine.decode import decode, start
from engine.generate import Rollouts, rollouts
from engine.step import Mixture
from sampling import Sampler


def mix_generate(models, prompts, *, combine, max_new_tokens: int, params: dict | None = None,
                 model_prompts=None, sampler: Sampler | None = None, n: int = 1, seed: int = 0,
                 stop_tokens=None, share_prefix: bool = True) -> Rollouts:
    """Generate ``n`` rollouts per prompt from a mixture of several models' next-token logits.

    ``combine``: a name from :data:`sampling.mixtures.MIXTURES` with the models in its order —
    ``"contrastive"`` ``[expert, amateur]`` (params ``alpha``, ``amateur_temperature``),
    ``"proxy_tuning"`` / ``"dexperts"`` ``[base, expert, anti_expert]`` (``alpha``), ``"cfg"``
    ``[conditional, unconditional]`` (``scale``) — or any pure ``(logits_list, params) -> logits``.
    ``params``: the mixture's parameters (defaults per name; each a number, or an array per
    prompt [G] or per rollout [G, N]; traced, so new values reuse the compiled loop). A
    function's params are passed to it as given.

    ``prompts``: G prompts (token-id lists, or strings with tokenizers) given to every model;
    ``model_prompts[i]``, when not None, replaces them for model ``i`` (its own G prompts) — for
    classifier-free guidance the unconditional model's prompt, e.g. just BOS or a negative
    prompt. The same model object may appear several times (each gets its own cache).

    ``sampler`` (default greedy), ``n``, ``seed``, ``stop_tokens``, ``share_prefix``: as
    :func:`engine.generate`; keys and the tokenizer come from the first model and its prompts.
    Rows stop at the first model's EOS ids and ``stop_tokens``. Models whose vocabulary sizes
    differ are a ``ValueError``. The same as ``engine.start(models[0], ..., tracks=...)`` then
    ``engine.decode(..., mixture=engine.Mixture(combine, names, params))``.
    """
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"a mixture needs at least two models, got {len(models)}")
    sizes = [m.config.vocab_size for m in models]
    if len(set(sizes)) > 1:
        raise ValueError(f"the models' vocabularies differ (sizes {sizes}); a logit mixture needs one vocabulary")
    model_prompts = [None] * len(models) if model_prompts is None else list(model_prompts)
    if len(model_prompts) != len(models):
        raise ValueError(f"model_prompts has {len(model_prompts)} entries for {len(models)} models")
    per_model = [prompts if p is None else p for p in model_prompts]
    if not all(isinstance(p, (list, tuple)) and p for p in per_model):
        raise ValueError("prompts (and each model_prompts entry given) must be non-empty lists of prompts")
    if any(len(p) != len(prompts) for p in per_model):
        raise ValueError(f"each model needs one prompt per rollout group: {[len(p) for p in per_model]} "
                         f"for {len(prompts)} prompts")
    check_int("n", n, 1)
    check_int("max_new_tokens", max_new_tokens, 1)
    tracks = {f"model{i}": m for i, m in enumerate(models[1:], 1)}
    state = start(models[0], per_model[0], capacity=max_new_tokens, n=n, seed=seed, share_prefix=share_prefix,
                  tracks=tracks, track_prompts=dict(zip(tracks, per_model[1:])))
    g = len(prompts)
    if not share_prefix:                   # settings per prompt [G] must reach each copy of the prompt
        sampler = check_sampler(sampler).broadcast((g, n)).reshape(state.shape)
    state = decode(models[0], state, max_new_tokens=max_new_tokens, sampler=sampler, stop_tokens=stop_tokens,
                   tracks=tracks, mixture=Mixture(combine, tuple(tracks), params))
    return rollouts(state, models[0].tokenizer, shape=(g, n))

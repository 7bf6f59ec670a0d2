"""Logit mixtures across models inside one compiled decode loop, each model with its own KV cache.

``mix_generate([expert, amateur], prompts, combine="contrastive", ...)``: every model is
prefilled with its prompts (``engine.start``), then one jitted ``lax.while_loop`` does, per step,
combine the models' current next-token logits (:mod:`sampling.mixtures`), draw one token per row
with the sampler, and run *every* model's forward on that token with its own cache.

The first model *leads*: its state holds the rollouts' tokens, log-probs, keys, penalties'
counts, the constraint automaton state and the stop flags; the others hold only their cache and
logits. The recorded ``logprobs`` are those of the mixture (log-softmax of the combined logits).
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp

from engine.checks import check_int, check_sampler, stop_ids
from engine.decode import row_sampler, start
from engine.generate import Rollouts, rollouts
from sampling import Sampler, sample
from sampling.mixtures import resolve, rows


def _mix_step(forwards, configs, params, states, sampler: Sampler, stops, combine, mix) -> tuple:
    lead = states[0]
    slot = lead.cache.index
    keys = jax.vmap(jax.random.fold_in)(lead.keys, lead.cache.length)      # as engine.decode's step
    draw = sample(combine([s.logits for s in states], mix), sampler, keys, lead.context(stops))
    live = ~lead.done & ~draw.dead                        # as engine.decode's step
    tok = jnp.where(live, draw.tokens, configs[0].pad_id)
    put = lambda buf, x: jax.lax.dynamic_update_slice(buf, x[:, None].astype(buf.dtype), (0, slot))
    out = []
    for forward, config, p, s in zip(forwards, configs, params, states):
        logits, cache = forward(config, p, tok[:, None], None, s.cache, last_only=True)
        out.append(dataclasses.replace(s, logits=logits, cache=cache.keep(live[:, None])))
    out[0] = dataclasses.replace(
        out[0], done=lead.done | draw.dead | jnp.isin(tok, stops), tokens=put(lead.tokens, tok),
        logprobs=put(lead.logprobs, jnp.where(live, draw.logprobs, 0.0)),
        sample_logprobs=put(lead.sample_logprobs, jnp.where(live, draw.sample_logprobs, 0.0)),
        counts=lead.counts.at[jnp.arange(tok.shape[0]), tok].add(live.astype(jnp.int32)),
        mu=jnp.where(live, draw.mu, lead.mu), fsm=jnp.where(live, draw.fsm, lead.fsm))
    return tuple(out)


@partial(jax.jit, static_argnums=(0, 1, 6), donate_argnums=(3,))
def mix_loop(forwards, configs, params, states, sampler: Sampler, stops, combine, mix, limit):
    """Decode the mixture until every row is done or ``limit`` rollout slots are used (one ``while_loop``).

    ``forwards``/``configs``: tuples, one per model (static); ``params``/``states``: tuples of their
    params and :class:`~engine.decode.DecodeState` (donated); ``combine``: a pure mixture
    function (static); ``mix``: its parameters (traced).
    """
    cond = lambda s: (s[0].cache.index < limit) & ~jnp.all(s[0].done)
    body = lambda s: _mix_step(forwards, configs, params, s, sampler, stops, combine, mix)
    return jax.lax.while_loop(cond, body, states)


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
    differ are a ``ValueError``.
    """
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"a mixture needs at least two models, got {len(models)}")
    sizes = [m.config.vocab_size for m in models]
    if len(set(sizes)) > 1:
        raise ValueError(f"the models' vocabularies differ (sizes {sizes}); a logit mixture needs one vocabulary")
    fn, mix = resolve(combine, len(models), params)
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
    mix = mix if callable(combine) else rows(mix, (len(prompts), n))      # named: one value per row
    mix = {k: jnp.asarray(v, jnp.float32) for k, v in mix.items()}
    states = tuple(start(m, p, capacity=max_new_tokens, n=n, seed=seed, share_prefix=share_prefix)
                   for m, p in zip(models, per_model))
    g = len(prompts)
    sampler = check_sampler(sampler).broadcast((g, n)).reshape(states[0].shape)
    stops = stop_ids(models[0].config, stop_tokens)
    states = mix_loop(tuple(m.forward for m in models), tuple(m.config for m in models),
                      tuple(m.params for m in models), states, row_sampler(sampler, states[0], stops=stops), stops,
                      fn, mix, jnp.int32(max_new_tokens))
    return rollouts(states[0], models[0].tokenizer, shape=(g, n))


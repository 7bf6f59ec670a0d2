"""Refinement: draft, read feedback on the draft, append it, and continue from the cache; repeat.

Round 0 drafts every rollout. Each later round calls ``feedback(prompt, attempt)`` on the rollouts
still going: ``None`` accepts the attempt (the rollout stops there), a string is appended to the
rollout with the ``cue`` after it (``engine.append``: only the new tokens are prefilled) and the
rollout decodes its next attempt. Rows accepted stop; the rest go on, all in one batch; the prompt
and the earlier rounds stay in the KV cache and are never prefilled again.

Feedback of every kind is a function of ``(prompt, attempt)``: a verifier's or an executor's
message (``meta.tasks.arith_verifiers.feedback``), a reward model's verdict turned into text
(:func:`reward_feedback`), or the model's own critique (:func:`self_feedback`).
"""
from __future__ import annotations

import numpy as np

import engine
from engine.checks import check_int, check_prompts, stop_ids
from engine.decode import bucket
from meta.budget import param_count
from meta.chain import segment_texts
from meta.common import PromptError, extract, finish, setup
from meta.result import Result
from meta.vote import winner


def _ids(model, what: str, x) -> list[int]:
    """Token ids of feedback or a cue (a string, or token ids for a model without a tokenizer)."""
    if isinstance(x, str):
        if model.tokenizer is None:
            raise ValueError(f"{what} is a string but the model has no tokenizer; give token ids")
        return model.tokenizer.encode(x, bos=False)
    if isinstance(x, (list, tuple)) and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in x):
        return [int(t) for t in x]
    raise ValueError(f"{what} must be a string (or token ids) or None, got {type(x).__name__}: {x!r:.60}")


def _ask(model, feedback, cue, max_tokens: int, prompt, g: int, m: int, attempt: str):
    """``feedback(prompt, attempt)`` and the token ids to append (with the cue; ``None`` when it
    accepted the attempt); its failures a :class:`PromptError` naming the prompt."""
    where = f"prompt {g} ({prompt!r:.60}), rollout {m}"
    try:
        out = feedback(prompt, attempt)
    except Exception as e:
        raise PromptError(g, f"feedback raised on {where}: {e!r}") from e
    if out is None:
        return None, None
    try:
        ids = _ids(model, f"feedback on {where}", out) + cue
    except ValueError as e:
        raise PromptError(g, str(e)) from None
    if len(ids) > max_tokens:
        raise PromptError(g, f"feedback on {where} is {len(ids)} tokens with the cue; max_feedback_tokens={max_tokens}")
    return out, ids


def refine(model, prompts, *, feedback, rounds: int, cue=None, n: int = 1, sampler=None, seed: int = 0,
           max_new_tokens: int = 64, max_feedback_tokens: int = 64, answer=None, budget=None,
           stop_tokens=None) -> Result:
    """Draft ``n`` rollouts per prompt, then up to ``rounds`` times append feedback and continue.

    ``feedback(prompt, attempt) -> str | None``: ``None`` accepts the attempt; a string (at most
    ``max_feedback_tokens`` tokens with the ``cue`` after it, e.g. ``"\\nA: "``) is appended and the
    rollout writes its next attempt, of up to ``max_new_tokens`` tokens. The last attempts are
    judged too. ``texts[g][r]`` is rollout ``r``'s last attempt, ``scores[g][r]`` 1.0 where it was
    accepted; ``chosen[g]`` the first accepted rollout, or else the vote of the last attempts'
    answers. ``info[g]``: each rollout's ``feedback`` (the strings, round by round), ``accepted``
    and ``transcript`` (everything after the prompt). Budget: drawn tokens, the prompt prefilled
    once and each appended token once (``prefilled``), feedback calls as ``scorer_calls``. A
    feedback function that raises, or returns neither text nor ``None``, is a :class:`meta.PromptError`
    (a ``ValueError``) naming the prompt, its index in ``.prompt``.
    """
    budget, sampler, t0 = setup(prompts, n, None, budget, sampler)
    if not callable(feedback):
        raise ValueError(f"feedback must be a function (prompt, attempt) -> str | None, got {feedback!r:.60}")
    check_int("rounds", rounds, 0)
    check_int("max_new_tokens", max_new_tokens, 1)
    check_int("max_feedback_tokens", max_feedback_tokens, 1)
    cue = [] if cue is None else _ids(model, "cue", cue)
    stop_ids(model.config, stop_tokens)                      # checked before any work
    ids = check_prompts(model, list(prompts), max_new_tokens)
    capacity = (rounds + 1) * max_new_tokens + rounds * bucket(max_feedback_tokens, 1)
    g = len(ids)
    state = engine.start(model, ids, capacity=capacity, n=n, seed=seed)
    state = engine.decode(model, state, max_new_tokens=max_new_tokens, sampler=sampler, stop_tokens=stop_tokens)
    start, going = np.zeros((g, n), int), np.ones((g, n), bool)
    said, accepted = [[[] for _ in range(n)] for _ in ids], np.zeros((g, n), bool)
    appended, appends, slots = 0, 0, 0
    attempts = [[None] * n for _ in ids]                 # each rollout's latest attempt
    for r in range(rounds + 1):
        now = segment_texts(model, state, start, stop_tokens)
        add = [[[] for _ in range(n)] for _ in ids]
        for i, m in zip(*np.nonzero(going)):
            attempts[i][m] = now[i][m]
            out, more = _ask(model, feedback, cue, max_feedback_tokens, prompts[i], int(i), int(m), attempts[i][m])
            budget.scorer_calls += 1
            if out is None:
                accepted[i, m], going[i, m] = True, False
                continue
            said[i][m], add[i][m] = said[i][m] + [out], more
        if r == rounds or not going.any():
            break
        state = engine.finish(state, accepted)          # an accepted attempt the rollout had not ended
        index = int(state.cache.index)
        state = engine.append(model, state, add)
        appended += sum(len(a) for row in add for a in row)
        appends, slots = appends + 1, slots + int(state.cache.index) - index
        start = np.where(going, np.asarray(state.cache.length).reshape(g, n), start)
        state = engine.decode(model, state, max_new_tokens=max_new_tokens, sampler=sampler, stop_tokens=stop_tokens)
    lengths = np.asarray(state.cache.length).reshape(g, n)
    generated = int(lengths.sum()) - appended
    budget.generated += generated
    budget.prefilled += sum(map(len, ids)) + appended
    budget.policy_calls += 1 + int(state.cache.index) - slots + appends    # prefill, decode steps, appends
    budget.policy_flops += 2.0 * param_count(model.params) * (int(lengths.sum()) + sum(map(len, ids)))
    answers = extract(answer, attempts)
    chosen = [int(np.argmax(accepted[i])) if accepted[i].any() else winner(answers[i])[1] for i in range(g)]
    transcripts = engine.rollouts(state, model.tokenizer).text
    info = [{"feedback": said[i], "accepted": accepted[i].tolist(),
             "transcript": transcripts[i] if transcripts is not None else None} for i in range(g)]
    return Result(method="refine", prompts=list(prompts), answers=[None if c is None else answers[i][c]
                                                                   for i, c in enumerate(chosen)],
                  chosen=chosen, texts=attempts, lengths=lengths.tolist(), extracted=answers,
                  scores=accepted.astype(float).tolist(), votes=[[] for _ in ids], budget=finish(budget, t0),
                  info=info)


def reward_feedback(reward_model, *, threshold: float, template: str = "The reward model gives this {score:.2f}; "
                    "try again.\n"):
    """Feedback from a reward model's verdict: ``None`` (accepted) when its score of the attempt
    (``sigmoid`` of its logit, as :class:`meta.scoring.RewardModel`) is at least ``threshold``,
    else ``template`` filled with the score."""
    from meta.scoring import RewardModel, sigmoid

    rm = RewardModel(reward_model)

    def fb(prompt, attempt):
        s = float(sigmoid(np.asarray(rm([prompt], [[attempt]]))[0, 0]))
        return None if s >= threshold else template.format(score=s)
    return fb


def self_feedback(model, *, template: str, accept, max_new_tokens: int = 32, sampler=None):
    """Self-feedback (Self-Refine, Madaan et al. 2023): the model critiques its own attempt. The
    critique is what ``model`` generates after ``template.format(prompt=, attempt=)``; ``accept(critique)``
    True accepts the attempt (``None``), else the critique is the feedback."""
    def fb(prompt, attempt):
        critique = engine.generate(model, [template.format(prompt=prompt, attempt=attempt)],
                                   max_new_tokens=max_new_tokens, sampler=sampler).text[0][0]
        return None if accept(critique) else critique
    return fb

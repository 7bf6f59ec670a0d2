"""A hand-computable fake model for exact-sequence tests: its next-token probabilities depend on the
last token alone (``TABLE``), and a fake reward model scores the last token (``SCORES``)."""
import dataclasses

import jax.numpy as jnp
import numpy as np

import models

EOS = 4
# next-token probabilities of the fake model, by last token (token 4 is EOS); greedy from 0: 1 2 1 2 ...
TABLE = np.array([[0.05, 0.50, 0.30, 0.10, 0.05],
                  [0.10, 0.05, 0.60, 0.20, 0.05],
                  [0.10, 0.60, 0.05, 0.20, 0.05],
                  [0.35, 0.10, 0.10, 0.05, 0.40],
                  [0.20, 0.20, 0.20, 0.20, 0.20]])
SCORES = np.array([0.0, 10.0, 20.0, 30.0, 40.0])      # the fake reward model: a score per last token


def fake_step(config, params, tokens, positions=None, cache=None, *, last_only=False):
    """Out = params["table"][last token] (log-probabilities, or scores); the cache is only advanced."""
    out = params["table"][tokens]
    return (out[:, -1] if last_only else out), cache.advance(tokens.shape[1])


@dataclasses.dataclass
class Fake:
    """The fake language model (``reward=False``, logits log ``table``) or reward model (scores ``table``)."""
    table: np.ndarray = None      # next-token probabilities (TABLE) or scores (SCORES) by last token
    reward: bool = False
    tokenizer = None
    forward = score = staticmethod(fake_step)

    @property
    def config(self):
        return models.preset("tiny", vocab_size=5, layers=1, eos_ids=(EOS,), pad_id=0, score_head=self.reward)

    @property
    def params(self):
        table = (SCORES if self.reward else TABLE) if self.table is None else self.table
        return {"table": jnp.asarray(table if self.reward else np.log(table), jnp.float32)}

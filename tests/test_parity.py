"""Numerical parity with PyTorch ``transformers`` on random tiny checkpoints (fp32)."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import engine
import models
from tests.conftest import write_hf


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logits_match_transformers(hf_checkpoint, tmp_path, seed):
    case, _, _ = hf_checkpoint
    ref = write_hf(tmp_path, case, seed=seed)
    model = models.load(tmp_path)
    tokens = np.random.default_rng(seed).integers(0, 97, size=(2, 40))
    with torch.no_grad():
        want = ref(torch.tensor(tokens)).logits.numpy()
    got, _ = models.forward(model.config, model.params, jnp.asarray(tokens))
    assert rel_err(got, want) < 1e-5


def test_greedy_matches_transformers_generate(hf_checkpoint):
    case, path, ref = hf_checkpoint
    model = models.load(path)
    prompts = [[1, 5, 9, 33, 2 + 40], [1, 7], [1, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70]]
    got = engine.generate(model, prompts, max_new_tokens=32)
    # transformers, one prompt at a time (no padding), EOS disabled so all 32 tokens come out
    for g, p in enumerate(prompts):
        with torch.no_grad():
            out = ref.generate(torch.tensor([p]), max_new_tokens=32, do_sample=False, eos_token_id=None,
                               pad_token_id=0)
        want = out[0, len(p):].numpy()
        n = int(got.lengths[g, 0])
        np.testing.assert_array_equal(np.asarray(got.tokens[g, 0, :n]), want[:n])
        if n < 32:  # stopped early only because it produced EOS
            assert want[n - 1] == 2

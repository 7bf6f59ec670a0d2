"""Benchmarks, printed as JSON lines (one per measurement).

    python -m scripts.bench decode --config 4m 25m --batch 1 64 [--hf]
    python -m scripts.bench shared-prefix --n 16 64      # one 1,024-token prompt, shared vs naive cache
    python -m scripts.bench filters                     # filter chains vs greedy, batch 64, vocab 32,000
    python -m scripts.bench search                      # each step-level search vs plain generate
    python -m scripts.bench speculative                 # greedy with / without speculative decoding
    python -m scripts.bench speculative --pair tiny-arith-large tiny-arith --prompts 16   # a trained pair
    python -m scripts.bench compile --batch 1 16        # compile s and ms/step, unrolled vs scanned layers
    python -m scripts.bench cold-start --model DIR      # scripts.generate twice, compile cache off vs on

``decode``: greedy generation of random-weight models with EOS disabled: tokens/s, ms per
step, and achieved bytes/s (the weights + the KV of the tokens in the cache, on average, per
step, over the step time: what a step must read). With
``--hf`` the same checkpoint also runs through ``transformers`` ``generate()`` in the same
process and the ratio is printed.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m scripts.bench best-of-n \
        --mesh data=1,tensor=1 data=2,tensor=1 data=4,tensor=1 data=8,tensor=1 data=4,tensor=2

``best-of-n``: the sampling workload of best-of-N (G prompts x N rollouts, temperature 1, EOS
disabled) on each ``--mesh`` (the first data*tensor devices) and on one device without a mesh,
at equal total work; repeats are interleaved across meshes so load on a shared machine hits
all alike. Prints tokens/s, wall and process CPU time (best of the repeats), each also
relative to the run without a mesh.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import engine
from engine.decode import bucket
import models

CONFIGS = {
    "4m": dict(vocab_size=2000, hidden=256, layers=4, heads=4, kv_heads=4, intermediate=688),
    "25m": dict(vocab_size=8000, hidden=512, layers=6, heads=8, kv_heads=8, intermediate=1376),
    "50m": dict(vocab_size=8000, hidden=512, layers=14, heads=8, kv_heads=8, intermediate=1376),
    "100m": dict(vocab_size=8000, hidden=512, layers=28, heads=8, kv_heads=8, intermediate=1376),   # 8.5x its 1-layer draft
    # SmolLM-135M's shape: 30 layers, what compile time grows with
    "135m": dict(vocab_size=49152, hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536,
                 tie_embeddings=True),
}


def make_config(name: str, dtype: str | None, **overrides) -> models.Config:
    base = models.preset("tiny", **CONFIGS[name], max_len=4096) if name in CONFIGS else models.preset(name)
    return dataclasses.replace(base, eos_ids=(), dtype=dtype or base.dtype, **overrides)


def interleaved(runs: dict, repeats: int) -> dict:
    """Best wall time of each zero-argument callable in ``runs``, repeats interleaved across them
    (so load from other processes on a shared machine hits all alike); one warm-up call each."""
    for fn in runs.values():
        fn()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for key, fn in runs.items():
            t = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t)
    return best


def bench_shared_prefix(args):
    """Best-of-N on one long prompt: the shared-prefix cache against the naive replicated one."""
    config = make_config(args.config, args.dtype)
    model = models.Model(config, models.init_params(config, jax.random.key(0)))
    prompt = [[1 + (7 * j) % (config.vocab_size - 1) for j in range(args.prompt_len)]]
    sampler = engine_sampler()
    for n in args.n:
        def run(share):
            return lambda: engine.generate(model, prompt, max_new_tokens=args.new_tokens, n=n, sampler=sampler,
                                           share_prefix=share)
        out = {share: run(share)() for share in (True, False)}
        best = interleaved({share: run(share) for share in (True, False)}, args.repeats)
        tokens = n * args.new_tokens
        print(json.dumps({"bench": "shared-prefix", "config": args.config,
                          "params_m": round(config.num_params / 1e6, 2), "dtype": config.dtype,
                          "prompt_len": args.prompt_len, "n": n, "new_tokens": args.new_tokens,
                          "shared_tokens_per_s": round(tokens / best[True], 1),
                          "naive_tokens_per_s": round(tokens / best[False], 1),
                          "speedup": round(best[False] / best[True], 2),
                          "shared_cache_mb": round(out[True].cache_bytes / 2**20, 1),
                          "naive_cache_mb": round(out[False].cache_bytes / 2**20, 1),
                          "same_tokens": bool(np.array_equal(out[True].tokens, out[False].tokens)),
                          "device": jax.devices()[0].device_kind}), flush=True)


def engine_sampler(**settings):
    from sampling import Sampler
    return Sampler(**settings)


CHAINS = {
    "greedy": dict(temperature=0.0),
    "temperature": dict(temperature=0.8),
    "top_k": dict(top_k=50),
    "top_p": dict(top_p=0.9),
    "min_p": dict(min_p=0.05),
    "typical": dict(typical=0.9),
    "repetition_penalty": dict(temperature=0.8, repetition_penalty=1.1),
    "full": dict(temperature=0.8, top_k=50, top_p=0.9, min_p=0.05, repetition_penalty=1.1),
}


def bench_filters(args):
    """The cost of each filter chain per decode step, relative to greedy, in the same run."""
    config = make_config(args.config, args.dtype, vocab_size=args.vocab)
    model = models.Model(config, models.init_params(config, jax.random.key(0)))
    prompts = [[1 + (i + 3 * j) % 100 for j in range(args.prompt_len)] for i in range(args.batch)]
    runs = {name: (lambda s=engine_sampler(**chain): engine.generate(model, prompts, max_new_tokens=args.new_tokens,
                                                                     sampler=s))
            for name, chain in CHAINS.items()}
    best = interleaved(runs, args.repeats)
    for name, seconds in best.items():
        print(json.dumps({"bench": "filters", "chain": name, "config": args.config, "vocab": args.vocab,
                          "batch": args.batch, "ms_per_step": round(1e3 * seconds / args.new_tokens, 3),
                          "vs_greedy": round(seconds / best["greedy"], 3),
                          "device": jax.devices()[0].device_kind}), flush=True)


def bench_search(args):
    """Each step-level search of ``meta.search`` against plain ``generate`` of the same rows and slots.

    tiny-arith on held-out hard val problems, ``--prompts`` x ``--n`` rollouts at temperature 0.8, up
    to ``--steps`` steps of at most ``--step-tokens`` slots each, scored two ways: by ``--scorer-model``
    riding along as a track (a second model's forward on every token; the whole search one compiled
    program) and by the task's exact process verifier, a host callback after every step (the loop
    leaves the device once per step). Each search is timed as a user calls it (prefill, the loop,
    texts and the result); ``generate`` draws the same rows for as many slots as the search used, and
    ``generate+track`` does the same with the scorer riding along (``start(tracks=)`` + ``decode``).
    Tokens/s counts tokens drawn (a pruned rollout's tokens included; a copy's shared past not).
    MCTS (``4 n / --beam`` simulations of ``--beam`` children) decodes only ``--beam`` rows of each prompt
    at a time, so its baselines draw ``--beam`` rollouts of each prompt.
    """
    import meta
    from meta.tasks import arith, arith_verifiers
    from sampling import Sampler
    policy, prm = models.load("tiny-arith"), models.load(args.scorer_model)
    problems = arith.held_out("val", "hard", args.prompts)
    prompts = [p.prompt for p in problems]
    n, sampler, tracks = args.n, Sampler(temperature=0.8), {"scorer": prm}
    common = dict(n=n, max_steps=args.steps, max_new_tokens=args.steps * args.step_tokens, sampler=sampler, seed=0,
                  answer=arith.answer, references=problems)
    searches = {"step_beam_search": partial(meta.step_beam_search, beam_width=args.beam),
                "dvts": partial(meta.dvts, beam_width=args.beam), "rebase": meta.rebase,
                "particle_filter": meta.particle_filter}
    scorers = {"prm": prm, "verifier": arith_verifiers.process_verifier("min")}
    runs, tokens = {}, {}
    for (name, fn), (how, scorer) in itertools.product(searches.items(), scorers.items()):
        key = f"{name}/{how}"
        runs[key] = lambda fn=fn, scorer=scorer: fn(policy, prompts, scorer=scorer, **common)
        result = runs[key]()
        slots = result.budget.policy_calls - 1
        runs[f"{key}:generate"] = lambda slots=slots: engine.generate(policy, prompts, max_new_tokens=slots, n=n,
                                                                       sampler=sampler, seed=0)
        tokens[key], tokens[f"{key}:generate"] = result.budget.generated, int(runs[f"{key}:generate"]().lengths.sum())
        if how == "prm":
            runs[f"{key}:generate+track"] = lambda slots=slots: jax.block_until_ready(engine.decode(
                policy, engine.start(policy, prompts, capacity=slots, n=n, tracks=tracks), max_new_tokens=slots,
                sampler=sampler, tracks=tracks).cache.length)
            tokens[f"{key}:generate+track"] = int(np.sum(runs[f"{key}:generate+track"]()))
    # mcts decodes only n = --beam children of each prompt per simulation: its baseline is generate of those rows
    runs["mcts/prm"] = lambda: meta.mcts(policy, prompts, scorer=prm, simulations=4 * n // args.beam,
                                         **{**common, "n": args.beam})
    runs["mcts/prm:generate"] = lambda: engine.generate(policy, prompts, max_new_tokens=args.steps * args.step_tokens,
                                                        n=args.beam, sampler=sampler, seed=0)
    runs["mcts/prm:generate+track"] = lambda: jax.block_until_ready(engine.decode(
        policy, engine.start(policy, prompts, capacity=args.steps * args.step_tokens, n=args.beam, tracks=tracks),
        max_new_tokens=args.steps * args.step_tokens, sampler=sampler, tracks=tracks).cache.length)
    tokens["mcts/prm"] = runs["mcts/prm"]().budget.generated
    tokens["mcts/prm:generate"] = int(runs["mcts/prm:generate"]().lengths.sum())
    tokens["mcts/prm:generate+track"] = int(np.sum(runs["mcts/prm:generate+track"]()))
    best = interleaved(runs, args.repeats)
    rate = {k: tokens[k] / best[k] for k in best}
    keys = [k for k in runs if ":" not in k]
    print(json.dumps({"bench": "search", "prompts": args.prompts, "n": n, "beam_width": args.beam,
                      "steps": args.steps, "scorer_model": args.scorer_model, "tokens": tokens,
                      "seconds": {k: round(v, 3) for k, v in best.items()},
                      "tokens_per_s": {k: round(v, 1) for k, v in rate.items()},
                      "vs_generate": {k: round(rate[k] / rate[f"{k}:generate"], 3) for k in keys},
                      "vs_generate_with_track": {k: round(rate[k] / rate[f"{k}:generate+track"], 3)
                                                 for k in keys if k.endswith("/prm")},
                      "device": jax.devices()[0].device_kind}), flush=True)


def speculative_pair(args):
    """(target, draft, prompts of a batch): ``--pair TARGET DRAFT`` (checkpoints or zoo names) on the
    task's hard test prompts, else a random-weight ``--config`` drafted by its first layers and head."""
    if args.pair:
        from meta.tasks import arith
        target, draft = (models.load(x) for x in args.pair)
        return target, draft, lambda b: [p.prompt for p in arith.held_out("test", "hard", b)]
    config = make_config(args.config, args.dtype)
    params = models.init_params(config, jax.random.key(0))
    damp = lambda layer: {**layer, "wo": layer["wo"] * args.damp, "w_down": layer["w_down"] * args.damp}
    params["layers"] = params["layers"][:args.draft_layers] + [damp(x) for x in params["layers"][args.draft_layers:]]
    short = dataclasses.replace(config, layers=args.draft_layers)     # the target's first layers and its head
    draft = models.Model(short, {**params, "layers": params["layers"][:args.draft_layers]})
    return models.Model(config, params), draft, lambda b: decode_prompts(b, args.prompt_len)


def bench_speculative(args):
    """Greedy generate with and without speculation (a draft model, prompt lookup), interleaved. Each
    variant decodes ``max(batch, --prompts)`` prompts in calls of ``batch``; tokens are the ones made
    (greedy: the same for all), acceptance = (tokens per policy forward per row - 1) / lookahead."""
    target, draft, prompts_of = speculative_pair(args)
    config, k, m = target.config, args.lookahead, args.new_tokens
    for batch in args.batch:
        every = prompts_of(max(batch, args.prompts))
        calls = [every[i:i + batch] for i in range(0, len(every) - batch + 1, batch)]
        go = lambda **kw: (lambda: [np.asarray(engine.generate(target, p, max_new_tokens=m, lookahead=k, **kw).tokens)
                                    for p in calls])
        best = interleaved({"plain": go(), "draft": go(draft=draft), "prompt_lookup": go(draft="prompt_lookup")},
                           args.repeats)
        made = sum(int(engine.generate(target, p, max_new_tokens=m).lengths.sum()) for p in calls)
        row = {"bench": "speculative", "config": args.pair or args.config, "damp": None if args.pair else args.damp,
               "params_m": round(config.num_params / 1e6, 2),
               "draft_params_m": round(draft.config.num_params / 1e6, 2), "dtype": config.dtype, "batch": batch,
               "prompts": len(calls) * batch, "new_tokens": m, "tokens_made": made, "lookahead": k,
               "plain_tokens_per_s": round(made / best["plain"], 1),
               "plain_gb_per_s": round(config.num_params * jnp.dtype(config.dtype).itemsize * made / batch
                                       / best["plain"] / 1e9, 2),
               "device": jax.devices()[0].device_kind}
        for name, tracks, which in (("draft", {"draft": draft}, "draft"), ("prompt_lookup", {}, "prompt_lookup")):
            blocks = 0
            for p in calls:
                state = engine.start(target, p, capacity=m, tracks=tracks, slots=(k + 1) * m + 1)
                state = engine.decode(target, state, max_new_tokens=m, tracks=tracks, draft=which, lookahead=k)
                blocks += (int(state.cache.index) - 1) // (k + 1)      # policy forwards (the last slot: the flush)
            row |= {f"{name}_tokens_per_s": round(made / best[name], 1),
                    f"{name}_speedup": round(best["plain"] / best[name], 2),
                    f"{name}_policy_forwards": blocks,
                    f"{name}_acceptance": round((made / (blocks * batch) - 1) / k, 3)}
        print(json.dumps(row), flush=True)


def bench_compile(args):
    """Compile seconds and step time of ``engine.generate`` in both layer layouts (unrolled, scanned).

    For each batch, a fresh compilation (``jax.clear_caches``, the persistent cache off) times the
    first call and a second call the same work compiled: compile seconds = first - second, ms a step =
    second / new tokens (prefill of the prompt included). Repeats interleave the layouts; medians.
    """
    jax.config.update("jax_enable_compilation_cache", False)      # before the first compilation
    config = make_config(args.config, args.dtype)
    unrolled = models.Model(config, models.init_params(config, jax.random.key(0)))
    layouts = {"unrolled": unrolled, "scanned": unrolled.with_layout(True)}
    runs = {(name, b): [] for name in layouts for b in args.batch}
    for _ in range(args.repeats):
        for (name, batch), times in runs.items():
            prompts = decode_prompts(batch, args.prompt_len)
            jax.clear_caches()
            t = [time.perf_counter()]
            for _ in range(2):                                    # compile and run; run again
                np.asarray(engine.generate(layouts[name], prompts, max_new_tokens=args.new_tokens).lengths)
                t.append(time.perf_counter())
            times.append(t)
    for (name, batch), times in runs.items():
        first, second = (float(np.median([t[i + 1] - t[i] for t in times])) for i in (0, 1))
        compile_s = [t[1] - t[0] - (t[2] - t[1]) for t in times]
        print(json.dumps({"bench": "compile", "config": args.config, "layers": config.layers, "layout": name,
                          "batch": batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                          "compile_s": round(float(np.median(compile_s)), 2),
                          "compile_s_all": [round(c, 2) for c in compile_s], "first_call_s": round(first, 2),
                          "ms_per_step": round(1e3 * second / args.new_tokens, 2), "repeats": args.repeats,
                          "device": jax.devices()[0].device_kind}), flush=True)


def bench_cold_start(args):
    """Wall seconds of ``scripts.generate`` run twice in a row as new processes, without the persistent
    compilation cache (``ROLLAX_COMPILE_CACHE=off``) and with it (a fresh directory each repeat),
    interleaved; medians and every run."""
    cmd = [sys.executable, "-m", "scripts.generate", "--model", args.model, "--prompt", args.prompt,
           "--max-new-tokens", str(args.new_tokens)]
    runs = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for mode, times in runs.items():
                env = {**os.environ, "ROLLAX_COMPILE_CACHE": "off" if mode == "off" else f"{tmp}/{r}"}
                pair = []
                for _ in range(2):
                    t = time.perf_counter()
                    subprocess.run(cmd, env=env, check=True, capture_output=True)
                    pair.append(round(time.perf_counter() - t, 2))
                times.append(pair)
    for mode, pairs in runs.items():
        print(json.dumps({"bench": "cold-start", "model": args.model, "cache": mode, "new_tokens": args.new_tokens,
                          "first_s": float(np.median([p[0] for p in pairs])),
                          "second_s": float(np.median([p[1] for p in pairs])), "runs": pairs,
                          "device": jax.devices()[0].device_kind}), flush=True)


def timed(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call (compilation)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def hf_model(config: models.Config, path: str):
    """A random ``transformers`` Llama of this shape, saved to ``path`` (safetensors)."""
    import torch
    import transformers
    torch.manual_seed(0)
    hf = transformers.LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden, intermediate_size=config.intermediate,
        num_hidden_layers=config.layers, num_attention_heads=config.heads,
        num_key_value_heads=config.kv_heads, max_position_embeddings=config.max_len,
        tie_word_embeddings=config.tie_embeddings, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = transformers.LlamaForCausalLM(hf).eval()
    model.save_pretrained(path, safe_serialization=True)
    return model


def bench_decode(args):
    for name in args.config:
        config = make_config(name, args.dtype)
        with tempfile.TemporaryDirectory() as tmp:
            hf = hf_in_child(name, tmp, args) if args.hf else {}
            model = (models.load(tmp, dtype=config.dtype) if args.hf else
                     models.Model(config, models.init_params(config, jax.random.key(0))))
        model.config = dataclasses.replace(model.config, eos_ids=())
        config = model.config
        for batch in args.batch:
            prompts = decode_prompts(batch, args.prompt_len)
            run = lambda: np.asarray(engine.generate(model, prompts, max_new_tokens=args.new_tokens).tokens)
            seconds = timed(run, args.repeats)
            tokens = batch * args.new_tokens
            held = bucket(args.prompt_len) + args.new_tokens / 2     # tokens in the cache, on average
            kv = 2 * config.layers * batch * held * config.kv_heads * config.head_dim
            step_bytes = (config.num_params + kv) * jnp.dtype(config.dtype).itemsize
            row = {"bench": "decode", "config": name, "params_m": round(config.num_params / 1e6, 2),
                   "dtype": config.dtype, "batch": batch, "prompt_len": args.prompt_len,
                   "new_tokens": args.new_tokens, "tokens_per_s": round(tokens / seconds, 1),
                   "ms_per_step": round(1e3 * seconds / args.new_tokens, 3),
                   "gb_per_s": round(step_bytes * args.new_tokens / seconds / 1e9, 2),
                   "device": jax.devices()[0].device_kind}
            if batch in hf:
                row |= hf[batch]
                row["speedup_vs_hf"] = round(row["tokens_per_s"] / row["hf_tokens_per_s"], 2)
            print(json.dumps(row), flush=True)


def decode_prompts(batch: int, length: int) -> list[list[int]]:
    return [[1 + (i + j) % 100 for j in range(length)] for i in range(batch)]


def hf_in_child(name: str, path: str, args) -> dict:
    """Write the random checkpoint and time ``transformers`` on it in a child process.

    torch's and XLA's thread pools in one process fight over the cores (rollax measured ~3x
    slower at batch 64 with torch active in the same process), so the two never share one;
    they run one after the other within the same benchmark run.
    """
    cmd = [sys.executable, "-m", "scripts.bench", "hf-decode", "--config", name, "--dir", path,
           "--batch", *map(str, args.batch), "--prompt-len", str(args.prompt_len),
           "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return {row["batch"]: {k: row[k] for k in ("hf_tokens_per_s", "torch_threads")}
            for row in map(json.loads, out.splitlines())}


def bench_hf_decode(args):
    """(child of ``decode --hf``) write a random HF checkpoint to --dir and time generate() on it."""
    ref = hf_model(make_config(args.config[0], None), args.dir)
    for batch in args.batch:
        print(json.dumps({"batch": batch, **hf_generate(ref, decode_prompts(batch, args.prompt_len), args)}),
              flush=True)


def bench_best_of_n(args):
    import sharding
    from sampling import Sampler
    config = make_config(args.config, args.dtype)
    model = models.Model(config, models.init_params(config, jax.random.key(0)))
    prompts = [[1 + (i + 7 * j) % 100 for j in range(args.prompt_len)] for i in range(args.prompts)]
    sampler = Sampler(temperature=1.0)
    runs = {"none": (model, None)}
    for spec in args.mesh:
        sizes = sharding.parse_mesh(spec)
        devices = jax.devices()[:sizes.get("data", 1) * sizes.get("tensor", 1)]
        mesh = sharding.make_mesh(**sizes, devices=devices)
        runs[spec] = (model.shard(mesh), mesh)
    def run(placed, mesh):
        return np.asarray(engine.generate(placed, prompts, max_new_tokens=args.new_tokens, n=args.n,
                                          sampler=sampler, seed=0, mesh=mesh).tokens)
    want = {k: np.asarray(run(*v)) for k, v in runs.items()}           # compile, and check the tokens
    best, cpu = dict.fromkeys(runs, float("inf")), dict.fromkeys(runs, float("inf"))
    for _ in range(args.repeats):
        for key, (placed, mesh) in runs.items():
            t, c = time.perf_counter(), time.process_time()
            run(placed, mesh)
            best[key] = min(best[key], time.perf_counter() - t)
            cpu[key] = min(cpu[key], time.process_time() - c)   # all threads: less hit by other processes
    tokens = args.prompts * args.n * args.new_tokens
    for key, (_, mesh) in runs.items():
        print(json.dumps({"bench": "best-of-n", "config": args.config, "params_m": round(config.num_params / 1e6, 2),
                          "mesh": None if mesh is None else dict(mesh.shape),
                          "devices": 1 if mesh is None else mesh.size, "prompts": args.prompts, "n": args.n,
                          "new_tokens": args.new_tokens, "seconds": round(best[key], 3),
                          "tokens_per_s": round(tokens / best[key], 1),
                          "time_vs_one_device": round(best[key] / best["none"], 2),
                          "cpu_seconds": round(cpu[key], 3), "cpu_vs_one_device": round(cpu[key] / cpu["none"], 2),
                          "same_tokens": bool(np.array_equal(want[key], want["none"])),
                          "device": jax.devices()[0].device_kind, "host_devices": jax.device_count()}), flush=True)


def hf_generate(ref, prompts, args) -> dict:
    import torch
    ids = torch.tensor(prompts)
    def run():
        with torch.no_grad():
            ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                         min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
    seconds = timed(run, args.repeats)
    return {"hf_tokens_per_s": round(len(prompts) * args.new_tokens / seconds, 1),
            "torch_threads": torch.get_num_threads()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    dec = sub.add_parser("decode", help="decode throughput (optionally against transformers)")
    dec.add_argument("--config", nargs="+", default=["4m", "25m"], help="4m, 25m or a preset name")
    dec.add_argument("--batch", nargs="+", type=int, default=[1, 64])
    dec.add_argument("--prompt-len", type=int, default=16)
    dec.add_argument("--new-tokens", type=int, default=128)
    dec.add_argument("--repeats", type=int, default=3)
    dec.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: the config's)")
    dec.add_argument("--hf", action="store_true", help="also run transformers generate() on the same weights")
    dec.set_defaults(fn=bench_decode)
    hfd = sub.add_parser("hf-decode", help=argparse.SUPPRESS)
    hfd.add_argument("--config", nargs=1, required=True)
    hfd.add_argument("--dir", required=True)
    hfd.add_argument("--batch", nargs="+", type=int, required=True)
    hfd.add_argument("--prompt-len", type=int, required=True)
    hfd.add_argument("--new-tokens", type=int, required=True)
    hfd.add_argument("--repeats", type=int, required=True)
    hfd.set_defaults(fn=bench_hf_decode)
    bon = sub.add_parser("best-of-n", help="best-of-N sampling throughput on device meshes")
    bon.add_argument("--config", default="4m", help="4m, 25m or a preset name")
    bon.add_argument("--mesh", nargs="+", default=["data=2,tensor=1", "data=4,tensor=1", "data=8,tensor=1"],
                     help="meshes as data=D,tensor=T (emulate CPU devices with XLA_FLAGS)")
    bon.add_argument("--prompts", type=int, default=4)
    bon.add_argument("--n", type=int, default=16, help="rollouts per prompt")
    bon.add_argument("--prompt-len", type=int, default=32)
    bon.add_argument("--new-tokens", type=int, default=64)
    bon.add_argument("--repeats", type=int, default=5)
    bon.add_argument("--dtype", default=None)
    bon.set_defaults(fn=bench_best_of_n)
    shp = sub.add_parser("shared-prefix", help="best-of-N on one long prompt: shared vs naive KV layout")
    shp.add_argument("--config", default="4m", help="4m, 25m or a preset name")
    shp.add_argument("--prompt-len", type=int, default=1024)
    shp.add_argument("--n", nargs="+", type=int, default=[16, 64])
    shp.add_argument("--new-tokens", type=int, default=256)
    shp.add_argument("--repeats", type=int, default=3)
    shp.add_argument("--dtype", default=None)
    shp.set_defaults(fn=bench_shared_prefix)
    fil = sub.add_parser("filters", help="per-step cost of filter chains relative to greedy")
    fil.add_argument("--config", default="4m")
    fil.add_argument("--vocab", type=int, default=32000)
    fil.add_argument("--batch", type=int, default=64)
    fil.add_argument("--prompt-len", type=int, default=16)
    fil.add_argument("--new-tokens", type=int, default=64)
    fil.add_argument("--repeats", type=int, default=3)
    fil.add_argument("--dtype", default=None)
    fil.set_defaults(fn=bench_filters)
    com = sub.add_parser("compile", help="compile seconds and step time, unrolled vs scanned layers")
    com.add_argument("--config", default="135m", help="4m, 25m, 135m or a preset name")
    com.add_argument("--batch", nargs="+", type=int, default=[1, 16])
    com.add_argument("--prompt-len", type=int, default=16)
    com.add_argument("--new-tokens", type=int, default=64)
    com.add_argument("--dtype", default=None)
    com.add_argument("--repeats", type=int, default=3)
    com.set_defaults(fn=bench_compile)
    cold = sub.add_parser("cold-start", help="scripts.generate run twice, without and with the compile cache")
    cold.add_argument("--model", required=True, help="a model directory or a shipped name")
    cold.add_argument("--prompt", default="12+7=")
    cold.add_argument("--new-tokens", type=int, default=32)
    cold.add_argument("--repeats", type=int, default=3)
    cold.set_defaults(fn=bench_cold_start)
    sea = sub.add_parser("search", help="each step-level search (meta.search) vs plain generate of the same rows")
    sea.add_argument("--prompts", type=int, default=16)
    sea.add_argument("--n", type=int, default=16, help="rollouts per prompt")
    sea.add_argument("--beam", type=int, default=4, help="children per kept rollout")
    sea.add_argument("--steps", type=int, default=6)
    sea.add_argument("--step-tokens", type=int, default=12, help="slots a step may take")
    sea.add_argument("--scorer-model", default="tiny-arith-prm", help="the process reward model riding along")
    sea.add_argument("--repeats", type=int, default=3)
    sea.set_defaults(fn=bench_search)
    spe = sub.add_parser("speculative", help="greedy decode with and without speculative decoding")
    spe.add_argument("--config", default="50m", help="4m, 25m, 50m, 100m or a preset name (random weights)")
    spe.add_argument("--pair", nargs=2, metavar=("TARGET", "DRAFT"),
                     help="a trained pair (checkpoints or zoo names, e.g. tiny-arith-large tiny-arith) on the "
                          "task's hard test prompts, instead of --config")
    spe.add_argument("--prompts", type=int, default=1, help="prompts decoded per variant (in calls of --batch)")
    spe.add_argument("--draft-layers", type=int, default=1, help="the draft: the target's first layers + its head")
    spe.add_argument("--damp", type=float, default=0.1,
                     help="scale of the later layers' output projections (random weights: how far the target "
                          "strays from its truncated draft; 1: not at all)")
    spe.add_argument("--lookahead", type=int, default=4)
    spe.add_argument("--batch", nargs="+", type=int, default=[1, 16, 64])
    spe.add_argument("--prompt-len", type=int, default=16)
    spe.add_argument("--new-tokens", type=int, default=64)
    spe.add_argument("--repeats", type=int, default=3)
    spe.add_argument("--dtype", default=None)
    spe.set_defaults(fn=bench_speculative)
    args = parser.parse_args(argv)
    for name in ("batch", "prompt_len", "new_tokens", "repeats", "n", "prompts", "vocab", "beam", "steps", "step_tokens",
                 "lookahead", "draft_layers"):
        values = getattr(args, name, None)
        if values is not None and min(values if isinstance(values, list) else [values]) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {values}")
    args.fn(args)


if __name__ == "__main__":
    from scripts import cli
    cli.run(main)

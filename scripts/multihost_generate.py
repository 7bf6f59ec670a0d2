"""Generate on every device of every host: the same script, unchanged, on one host or a TPU pod.

One host (laptop CPU, one GPU, one TPU VM) -- no set-up at all::

    python -m scripts.multihost_generate --model ~/models/Llama-3.2-1B --prompts prompts.txt --n 8

A Cloud TPU pod slice -- start the *same command on every worker* at once; JAX finds the
coordinator, the number of hosts and each host's id by itself::

    gcloud compute tpus tpu-vm ssh my-pod --zone=us-central2-b --worker=all --command \\
        "cd rollax && python -m scripts.multihost_generate --model /data/Llama-3.2-1B \\
                      --prompts /data/prompts.txt --n 8 --mesh data=-1,tensor=4 --out /data/out.json"

Any other set of machines (or processes on one machine) -- tell each process where process 0
listens, how many processes there are and which one it is::

    ROLLAX_COORDINATOR=10.0.0.1:8476 ROLLAX_NUM_PROCESSES=2 ROLLAX_PROCESS_ID=0 python -m scripts.multihost_generate ...
    ROLLAX_COORDINATOR=10.0.0.1:8476 ROLLAX_NUM_PROCESSES=2 ROLLAX_PROCESS_ID=1 python -m scripts.multihost_generate ...

(``--coordinator/--num-processes/--process-id`` do the same.) What happens on each host:

1. ``sharding.initialize()`` joins the hosts through ``jax.distributed`` (a no-op on one host);
2. ``sharding.make_mesh`` builds one ``(data, tensor)`` mesh over all devices of all hosts;
3. ``models.load(path, mesh=mesh)`` reads from the host's own copy of the checkpoint only the
   blocks its devices hold;
4. the host takes its part of the prompt file (host ``i`` of ``P``: the ``i``-th of ``P``
   contiguous blocks) and ``sharding.gather_prompts`` tells every host everyone's prompts;
5. ``engine.generate(..., mesh=mesh)`` runs one SPMD program over the global batch; results
   come back on every host. Each host prints the rollouts of its own prompts as JSON lines;
   ``--out`` writes all of them (``{process}`` in the name is replaced by the process id).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import sharding


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model directory (Hugging Face or rollax), the same path on every host")
    src.add_argument("--preset", help="a models preset with random weights (for trying the set-up)")
    p.add_argument("--init-seed", type=int, default=0, help="weight seed for --preset")
    p.add_argument("--prompts", required=True, help="text file, one prompt per line")
    p.add_argument("--ids", action="store_true", help="prompt lines are space-separated token ids")
    p.add_argument("--mesh", default="data=-1,tensor=1", help="mesh sizes, e.g. data=-1,tensor=4")
    p.add_argument("--n", type=int, default=1, help="rollouts per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON file for all results ({process} is replaced by the process id)")
    p.add_argument("--coordinator", help="host:port of process 0 (default: $ROLLAX_COORDINATOR or auto-detected)")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    return p.parse_args(argv)


def my_block(lines: list, process: int, processes: int) -> list:
    """Host ``process``'s contiguous block of ``lines`` (blocks differ in size by at most one)."""
    return [lines[i] for i in np.array_split(np.arange(len(lines)), processes)[process]]


def tensor_within_host(mesh) -> bool:
    """Whether every group of devices along the ``tensor`` axis belongs to one host (fast links)."""
    groups = mesh.devices.reshape(-1, mesh.shape["tensor"])
    return all(len({d.process_index for d in group}) == 1 for group in groups)


def main(argv=None) -> None:
    """Run the steps of the module docstring on this host."""
    args = parse_args(argv)
    sharding.initialize(args.coordinator, args.num_processes, args.process_id)  # before any other JAX work
    import jax

    import engine
    import models
    from sampling import Sampler

    mesh = sharding.make_mesh(**sharding.parse_mesh(args.mesh))
    if args.model:
        model = models.load(args.model, mesh=mesh)
    else:
        config = models.preset(args.preset)
        model = models.Model(config, models.init_params(config, jax.random.key(args.init_seed))).shard(mesh)
    lines = [line for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    mine = my_block(lines, jax.process_index(), jax.process_count())
    if args.ids:
        local = [[int(t) for t in line.split()] for line in mine]
    elif model.tokenizer is None:
        raise ValueError("this model has no tokenizer: give prompts as token ids with --ids")
    else:
        local = [model.tokenizer.encode(line) for line in mine]
    prompts, own = sharding.gather_prompts(local)
    out = engine.generate(model, prompts, max_new_tokens=args.max_new_tokens, n=args.n, seed=args.seed,
                          sampler=Sampler(temperature=args.temperature, top_p=args.top_p), mesh=mesh)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    rows = [{"prompt": p, "tokens": [tokens[g, r, :lengths[g, r]].tolist() for r in range(args.n)],
             **({"text": out.text[g]} if out.text is not None else {})} for g, p in enumerate(prompts)]
    for row in rows[own]:
        print(json.dumps(row), flush=True)
    if args.out:
        path = Path(args.out.replace("{process}", str(jax.process_index())))
        path.write_text(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                                    "devices": jax.device_count(), "mine": [own.start, own.stop],
                                    "mesh": dict(mesh.shape), "tensor_within_host": tensor_within_host(mesh),
                                    "rollouts": rows}))
    sharding.shutdown()


if __name__ == "__main__":
    from scripts import cli
    cli.run(main)

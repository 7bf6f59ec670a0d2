"""Generate from a model directory, streaming tokens to the terminal as they are produced.

    python -m scripts.generate --model DIR --prompt "Q: 12+7=?" [--max-new-tokens 64]
        [--temperature 0.8 --top-p 0.95 --top-k 0 --seed 0 -n 1] [--chat]

With ``--chat`` the prompt is one user message, formatted by the model's chat template (with the
cue for the assistant's turn); the formatted text is printed before the reply.

With ``-n 1`` the rollout is streamed token by token; with ``-n > 1`` the rollouts are
generated together (one batch sharing the prompt) and printed one after another.
"""
from __future__ import annotations

import argparse

import engine
import models
from models.tokenizer import CONTEXT
from sampling import Sampler


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model directory (Hugging Face or rollax) or a shipped name")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-n", type=int, default=1, help="rollouts of the prompt")
    parser.add_argument("--chat", action="store_true", help="the prompt is a user message for the chat template")
    args = parser.parse_args(argv)
    model = models.load(args.model)
    if model.tokenizer is None:
        raise ValueError(f"{args.model} has no tokenizer (tokenizer.json or tokenizer.model)")
    sampler = Sampler(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    kwargs = dict(max_new_tokens=args.max_new_tokens, sampler=sampler, seed=args.seed)
    prompt = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
    if args.n == 1:
        stream_text(model, prompt, **kwargs)
    else:
        out = engine.generate(model, [prompt], n=args.n, **kwargs)
        shown = prompt_text(model.tokenizer, prompt)[0]
        for i, text in enumerate(out.text[0]):
            print(f"--- rollout {i} ({int(out.lengths[0, i])} tokens)\n{shown}{text}")
    return 0


def prompt_text(tokenizer, prompt) -> tuple[str, list[int]]:
    """The text and ids of a prompt: a string, or a chat as its template renders it for a reply."""
    if isinstance(prompt, str):
        return prompt, tokenizer.encode(prompt)
    return (tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False),
            tokenizer.apply_chat_template(prompt, add_generation_prompt=True))


def stream_text(model, prompt, **kwargs) -> None:
    """Print ``prompt`` (a string or a chat, as its template renders it) then each new piece of text
    as soon as its token is sampled: the text as it reads after the prompt (``models.continuation``),
    held back while it ends inside a character that spans several tokens (U+FFFD), so the printed
    text is ``engine.generate``'s."""
    tok, stops = model.tokenizer, set(model.config.eos_ids)
    tokens = engine.stream(model, prompt, **kwargs)        # bad settings raise here, before any output
    head, ids = prompt_text(tok, prompt)
    context = ids[-CONTEXT:]
    print(head, end="", flush=True)
    ids, shown = [], ""
    for token in tokens:
        if token in stops:
            break
        ids.append(token)
        text = models.continuation(tok, context, ids)
        if not text.endswith("\ufffd") and text.startswith(shown):
            print(text[len(shown):], end="", flush=True)
            shown = text
    final = models.continuation(tok, context, ids)
    if final.startswith(shown):
        print(final[len(shown):], end="")                 # what a cut-off character left (U+FFFD)
    print()


if __name__ == "__main__":
    from scripts import cli
    cli.run(main)

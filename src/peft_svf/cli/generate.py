"""``peft-svf generate`` and ``peft-svf chat``: self-adaptive two-pass generation with a set of experts.

Pass 1 (the dispatcher) decides which expert or mixture answers each prompt; pass 2 generates with it. Both
commands print the decision, so it is visible which expert answered.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from .common import (
    add_expert_arguments,
    add_model_arguments,
    as_prompt,
    description,
    load_model,
    self_adaptive_model,
)

EXAMPLES = """examples:
  peft-svf generate --expert math=experts/math/expert --expert code=experts/code/expert "What is 12 + 30?"
  peft-svf generate --model meta-llama/Llama-3.1-8B-Instruct --expert math=org/llama-math-svf \\
      --expert code=org/llama-code-svf --dispatcher soft "Write a function that reverses a list."
  peft-svf chat --expert math=experts/math/expert --expert reasoning=experts/reasoning/expert"""


def _add_common(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_expert_arguments(parser, required=True)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="default: 128")
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature; 0 (default) is greedy"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")


def add_parser(commands: argparse._SubParsersAction) -> None:
    generate = commands.add_parser(
        "generate", help="two-pass self-adaptive generation, printing the dispatch decision",
        description=description(__doc__), epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    generate.add_argument(
        "prompts", nargs="+", metavar="PROMPT", help="one or more prompts, answered as one batch"
    )
    _add_common(generate)
    generate.add_argument(
        "--raw-prompts", action="store_true", help="send the text as is, without the chat template"
    )
    generate.set_defaults(func=generate_main)
    chat = commands.add_parser(
        "chat", help="interactive self-adaptive chat (each turn dispatched anew)",
        description="Interactive self-adaptive chat: every user turn is dispatched anew (pass 1 reads the "
        "latest question), then answered with the chosen expert or mixture. Empty line, /exit or end of "
        "input (Ctrl-D) quits; /reset clears the conversation.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _add_common(chat)
    chat.add_argument("--system", default=None, help="a system message opening the conversation")
    chat.set_defaults(func=chat_main)


def describe(decision: Any) -> str:
    """One line for a dispatch decision: the label, then each expert's weight (and the base's, if any)."""
    weights = [
        f"{name}={'per-layer' if isinstance(a, Mapping) else f'{a:.2f}'}"
        for name, a in decision.alpha.items()
    ]
    if decision.base:
        weights.append(f"base={decision.base:.2f}")
    label = decision.adapter or decision.label or "mixture"
    return f"[dispatch: {label}; alpha {', '.join(weights) or 'none (base weights)'}]"


def _completions(adaptive_model: Any, prompts: Sequence[Any], args: argparse.Namespace) -> list[str]:
    """Two-pass generation for a batch of prompts; the new text of each."""
    import torch

    from ..prompts import render

    torch.manual_seed(args.seed)
    sampling = {"do_sample": True, "temperature": args.temperature} if args.temperature > 0 else {
        "do_sample": False, "temperature": None, "top_p": None, "top_k": None}  # fmt: skip
    out = adaptive_model.generate(prompts=list(prompts), max_new_tokens=args.max_new_tokens, **sampling)
    # generate returns prompt + completion, the prompts left-padded to the longest one
    tokenizer = adaptive_model.tokenizer
    width = tokenizer([render(tokenizer, p) for p in prompts], padding=True, add_special_tokens=False,
                      return_tensors="pt")["input_ids"].shape[1]  # fmt: skip
    return tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)


def generate_main(args: argparse.Namespace) -> int:
    model, tokenizer = load_model(args.model, args.device, args.dtype)
    adaptive_model = self_adaptive_model(args.experts, model, tokenizer, args.dispatcher, args.classifier)
    completions = _completions(
        adaptive_model, [as_prompt(p, tokenizer, args.raw_prompts) for p in args.prompts], args
    )
    for i, (prompt, decision, text) in enumerate(
        zip(args.prompts, adaptive_model.last_decisions, completions, strict=True)
    ):
        if i:
            print()
        print(f">>> {prompt}")
        print(describe(decision))
        print(text.strip())
    return 0


def chat_main(args: argparse.Namespace) -> int:
    model, tokenizer = load_model(args.model, args.device, args.dtype)
    adaptive_model = self_adaptive_model(args.experts, model, tokenizer, args.dispatcher, args.classifier)
    opening = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(opening)
    print(
        f"experts: {', '.join(adaptive_model.experts)}; dispatcher {args.dispatcher}. "
        "Empty line or /exit quits, /reset clears."
    )
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if text in ("", "/exit", "/quit"):
            return 0
        if text == "/reset":
            messages = list(opening)
            continue
        messages.append({"role": "user", "content": text})
        reply = _completions(adaptive_model, [messages], args)[0].strip()
        print(describe(adaptive_model.last_decisions[0]))
        print(f"model> {reply}")
        messages.append({"role": "assistant", "content": reply})

"""The judge's prompts: the book's pointwise prompt, and the comparative one.

`pointwise` is chapter 7 of "Build a Large Language Model (from Scratch)" word for word, one call
per (model, item), so its numbers stay comparable with old ones. `comparative` is the fix from
seed-facts.md: one call per item holding the reference answer and every model's answer under
neutral labels "Model 1..N", answered as JSON. Each answer is wrapped in a tagged block so an
answer that itself contains headings cannot be mistaken for the next one.

A template hash identifies each prompt's exact wording: it is part of every score's judge version
and of every cache key, so editing a prompt never reuses judgements made with the old wording.
"""

from __future__ import annotations

import hashlib

from orchestrator.judge.schemas import Item

# --- the book (Alpaca format; `format_input` and the scoring prompt of chapter 7) -------------

ALPACA_INSTRUCTION = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}"
)
ALPACA_INPUT = "\n\n### Input:\n{input}"

POINTWISE_TEMPLATE = (
    "Given the input `{formatted_input}` "
    "and correct output `{output}`, "
    "score the model response `{response}`"
    " on a scale from 0 to 100, where 100 is the best score. "
    "Respond with the integer number only."
)


def format_input(item: Item) -> str:
    """The book's `format_input`: the Alpaca prompt up to (not including) "### Response:"."""
    text = ALPACA_INSTRUCTION.format(instruction=item.instruction)
    return text + (ALPACA_INPUT.format(input=item.input) if item.input else "")


def pointwise_messages(item: Item, response: str) -> list[dict[str, str]]:
    prompt = POINTWISE_TEMPLATE.format(formatted_input=format_input(item), output=item.output, response=response)
    return [{"role": "user", "content": prompt}]


# --- comparative ------------------------------------------------------------------------------

COMPARATIVE_SYSTEM = (
    "You are a careful, consistent grader of answers to instructions. You score every answer "
    "on its own merits against the task and the reference answer, never by its label, its "
    "position in the list or its length."
)

COMPARATIVE_TEMPLATE = (
    "Below is a task: an instruction, possibly with an input, and a reference answer written by "
    "a person. Then come {n} answers to the same task from different models, labelled "
    "{labels_first} to {labels_last}. The labels are assigned at random for each task and say "
    "nothing about the models.\n\n"
    "Score each model's answer from 0 to 100 for how well it completes the task: 100 means as "
    "good as the reference answer or better, 0 means wrong or useless. Use the reference answer "
    "as a guide to what is correct, not as the only acceptable wording. Add a short comment for "
    "each answer saying why.\n\n"
    "Answer with a JSON object only, with exactly one entry per label, of the form:\n"
    '{{"Model 1": {{"score": <integer 0-100>, "comments": "<one or two sentences>"}}, ...}}\n\n'
    "<task>\n{formatted_input}\n</task>\n\n"
    "<reference_answer>\n{output}\n</reference_answer>\n\n"
    "{answers}"
)
ANSWER_BLOCK = '<answer label="{label}">\n{answer}\n</answer>'


def label(position: int) -> str:
    """The label shown for the answer at 0-based `position`."""
    return f"Model {position + 1}"


def comparative_messages(item: Item, shown_answers: list[str]) -> list[dict[str, str]]:
    """Messages for one item, the answers in the (already shuffled) order they are shown."""
    n = len(shown_answers)
    blocks = "\n\n".join(ANSWER_BLOCK.format(label=label(i), answer=answer) for i, answer in enumerate(shown_answers))
    user = COMPARATIVE_TEMPLATE.format(
        n=n,
        labels_first=label(0),
        labels_last=label(n - 1),
        formatted_input=format_input(item),
        output=item.output,
        answers=blocks,
    )
    return [{"role": "system", "content": COMPARATIVE_SYSTEM}, {"role": "user", "content": user}]


def _hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


POINTWISE_TEMPLATE_HASH = _hash("pointwise", ALPACA_INSTRUCTION, ALPACA_INPUT, POINTWISE_TEMPLATE)
COMPARATIVE_TEMPLATE_HASH = _hash(
    "comparative",
    ALPACA_INSTRUCTION,
    ALPACA_INPUT,
    COMPARATIVE_SYSTEM,
    COMPARATIVE_TEMPLATE,
    ANSWER_BLOCK,
)
TEMPLATE_HASHES = {"pointwise": POINTWISE_TEMPLATE_HASH, "comparative": COMPARATIVE_TEMPLATE_HASH}

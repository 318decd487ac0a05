"""The LLM judge: scores models' answers to instruction test items, run by the service (the API
key never goes to a node), through the `openai` client against OpenAI or any compatible server.

    report = judge_answers(session_factory, settings, items, {"run-a": [...], "run-b": [...]}, k=3)

Modules: prompts (the book's pointwise prompt, the comparative one, template hashes), client
(the one network call), cache (the `judgements` table), runner (cache, calls, retries of
malformed answers), comparative / pointwise (planning and parsing), scoring and stats (means,
95% CIs), consistency (repeat spread and position bias), cost (token prices, booking), compare
(`judge_answers`, the entry point).
"""

from orchestrator.judge.compare import judge_answers
from orchestrator.judge.errors import InvalidComparisonError, JudgeError, JudgeNotConfiguredError
from orchestrator.judge.schemas import ComparisonReport, Item, JudgeVersion

__all__ = [
    "judge_answers",
    "ComparisonReport",
    "Item",
    "JudgeVersion",
    "JudgeError",
    "JudgeNotConfiguredError",
    "InvalidComparisonError",
]

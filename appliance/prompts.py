"""axolotl's `type: alpaca` prompt (axolotl.prompters.AlpacaPrompter, instruct style).

One home for it: the evaluation asks held-out rows the way training taught them, the capacity
plan counts the template's tokens, and the QLoRA bench renders its rows with it.
"""

ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)

"""trainyard's trainer: GPT-2 from scratch under torchrun, on one CPU or many GPU nodes.

Modules: model (GPT-2 + Hugging Face weights), tokenizer (GPT-2 BPE, offline), corpus (the
shipped corpus), data + prepare (token shards), config (the train config), checkpoint, metrics,
train (the torchrun entry point), evaluate (test loss, bits per byte). See
docs/trainer-contract.md for what the service relies on.
"""

"""Stacks under test: the runtime an evaluation certifies, as configuration (docs/stacks.md).

`builtin` is our PyTorch runtime; `llamacpp` runs the .apr exported as GGUF in llama-cpp-python;
`command` is any runtime behind the JSON request/response contract of stacks/command.py.
"""

from .registry import KINDS, StackSpec, configured_stacks, load_for_evaluation, stack_fingerprint, unavailable

__all__ = ["KINDS", "StackSpec", "configured_stacks", "load_for_evaluation", "stack_fingerprint", "unavailable"]

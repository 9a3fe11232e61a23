"""`llamacpp`: llama-cpp-python running the .apr exported as GGUF (`apr-qa export-gguf`).

An optional extra, built from source by `make setup`: portable by default (GGML_NATIVE=OFF: AVX2, FMA,
F16C), or for this machine's CPU with LLAMACPP_BUILD=native. Which one ran is part of the verdict, so the
build's features (llama_print_system_info) are in the stack's fingerprint and in its evaluation's details.
Where `import llama_cpp` fails the stack is unavailable and says why. The GGUF is exported into the
evaluation's work folder. Two contexts share the memory-mapped weights: one decodes (logits of the last
token only, as a user's generation would) and is timed, the other returns the logits of every position
(logits_all) for the consistency statistics.
"""

from __future__ import annotations

import time
from importlib import metadata, util
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UnsupportedError
from .adapter import StackModel, harness_tokenizer, make_generation, require_decoder
from .registry import file_digest

DISTRIBUTION = "llama_cpp_python"


def unavailable(spec=None) -> str | None:
    try:
        import llama_cpp  # noqa: F401
    except Exception as exc:  # ImportError, or OSError from a broken shared library
        return f"llama-cpp-python is not importable ({type(exc).__name__}: {exc})"
    return None


def shared_libraries() -> list[Path]:
    """llama-cpp-python's compiled libraries (libllama, libggml*), found without importing it."""
    spec = util.find_spec("llama_cpp")
    if spec is None or not spec.origin:
        return []
    lib = Path(spec.origin).parent / "lib"
    return sorted({p.resolve() for p in lib.glob("*") if p.suffix in (".so", ".dylib", ".dll") or ".so." in p.name})


def build_features() -> str:
    """What the installed llama.cpp was compiled for and uses on this CPU, as llama.cpp prints it
    (llama_print_system_info: 'CPU : SSE3 = 1 | ... | AVX2 = 1 | F16C = 1 | FMA = 1 | ...'); '' when
    llama-cpp-python is not importable."""
    try:
        import llama_cpp
    except Exception:  # ImportError, or OSError from a broken shared library: unavailable() says why
        return ""
    return " ".join(llama_cpp.llama_print_system_info().decode(errors="replace").split())


def fingerprint_parts(spec, variant: str | None) -> list[str]:
    """The package version, the build's features and the hash of each shared library (a rebuild of the
    same version changes them; the GGUF export code is in the job's code record)."""
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "absent"
    return ([f"{DISTRIBUTION}=={version}", f"build={build_features()}"]
            + [f"{p.name}={file_digest(p)}" for p in shared_libraries()])


def export_for_stack(model_path: Path, work_dir: Path) -> tuple[Path, dict]:
    """A .apr -> its GGUF in work_dir (a GGUF is used as is), and what the export re-encoded."""
    if model_path.suffix == ".gguf":
        return model_path, {"gguf": str(model_path), "reencoded": {}}
    from ..gguf_export import export_gguf

    out = work_dir / (model_path.stem + ".gguf")
    result = export_gguf(model_path, out)
    return out, {"gguf": out.name, "reencoded": result.reencoded, "export_notes": result.notes}  # a temp file


def load(spec, model_path: Path, golden, opts, work_dir: Path, threads: int | None) -> LlamaCppModel:
    tokenizer, config = harness_tokenizer(model_path)
    require_decoder(spec.name, config, model_path)
    gguf, export = export_for_stack(model_path, work_dir)
    longest = max(len(tokenizer.encode(p.input)) for p in golden.prompts)
    n_ctx = -(-(longest + max(opts.max_new_tokens, opts.greedy_tokens) + 8) // 64) * 64
    if opts.corpus_reference:  # the corpus windows are scored in one batch each
        from ..evaluation.corpus import read_reference

        n_ctx = max(n_ctx, read_reference(opts.corpus_reference).n_ctx)
    return LlamaCppModel(spec.name, gguf, tokenizer, config, n_ctx, spec.threads or threads or 2, export)


class LlamaTokenizer:
    """llama.cpp's own tokenizer, so invariant I-5 checks the stack's tokenization, not ours."""

    def __init__(self, llm, eos_ids: set[int]):
        self._llm = llm
        self.eos_ids = eos_ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._llm.tokenize(text.encode(), add_bos=add_special_tokens, special=True)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._llm.detokenize(list(ids), special=not skip_special_tokens).decode("utf-8", errors="replace")


class LlamaCppModel(StackModel):
    def __init__(self, name: str, gguf: Path, harness_tok, config: dict, n_ctx: int, threads: int, details: dict):
        import llama_cpp

        common: dict[str, Any] = {"n_ctx": n_ctx, "n_batch": n_ctx, "n_threads": threads, "verbose": False, "seed": 0}
        self._decoder = llama_cpp.Llama(str(gguf), logits_all=False, **common)
        self._scorer = llama_cpp.Llama(str(gguf), logits_all=True, **common)
        self._lib = llama_cpp
        details = {**details, "llama_cpp_python": llama_cpp.__version__, "build": build_features(), "n_ctx": n_ctx,
                   "n_threads": threads}
        eos = {int(self._decoder.token_eos())} | set(harness_tok.eos_ids)
        super().__init__(name, LlamaTokenizer(self._decoder, eos), config, f"llama.cpp:{gguf.suffix[1:]}",
                         gguf.stat().st_size, details)
        self.vocab_size: int = self._decoder.n_vocab()
        self.max_positions = n_ctx

    def _last_logits(self) -> np.ndarray:
        ptr = self._lib.llama_get_logits_ith(self._decoder.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.vocab_size,))

    def greedy(self, text, ids, max_new_tokens, stop_on_eos, timeout_s):
        llm = self._decoder
        if len(ids) + max_new_tokens > self.max_positions:
            raise UnsupportedError(f"prompt plus {max_new_tokens} tokens exceeds the context {self.max_positions}")
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        new = [int(np.argmax(self._last_logits()))]
        ttft = time.perf_counter() - start
        finish = "length"
        while True:
            if stop_on_eos and new[-1] in self.tokenizer.eos_ids:
                finish = "eos"
                break
            if len(new) >= max_new_tokens:
                break
            if timeout_s is not None and time.perf_counter() - start > timeout_s:
                finish = "timeout"
                break
            llm.eval([new[-1]])
            new.append(int(np.argmax(self._last_logits())))
        total = time.perf_counter() - start
        return make_generation(ids, new, self.tokenizer.decode(new), finish, ttft, total)

    def logits(self, batch, start: int = 0):
        out = []
        for ids in batch:
            self._scorer.reset()
            self._scorer.eval(list(ids))
            out.append(torch.from_numpy(np.array(self._scorer.scores[start:len(ids)], dtype=np.float32)))
        return out

    def close(self) -> None:
        for llm in (self._decoder, self._scorer):
            llm.close()

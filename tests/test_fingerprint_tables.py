"""Every entry of the stack-fingerprint tables names something that exists: a listed file or folder that
is missing would drop out of the hash, and edits to its code would no longer rerun the stage."""

from __future__ import annotations

import pytest

from apr_qa.dtypes import QUANT_LEVELS
from apr_qa.workflow import fingerprint


def _entries() -> list[str]:
    named = {entry for files, _, _ in fingerprint.STAGES.values() for entry in files}
    named.update(fingerprint.CODEC_COMMON)
    for variant in QUANT_LEVELS:
        named.update(fingerprint.variant_codec_files(variant))
    return sorted(named)


@pytest.mark.parametrize("entry", _entries())
def test_every_named_file_or_folder_exists(entry):
    path = fingerprint.PACKAGE_ROOT / entry
    if entry.endswith("/"):  # a folder: all its .py and .c files are hashed, so it must hold some
        assert path.is_dir() and any(p.suffix in (".py", ".c") for p in path.rglob("*")), path
    else:
        assert path.is_file(), path

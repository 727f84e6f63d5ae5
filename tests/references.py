"""Optional third-party references for parity tests (never used by semtok itself).

torchaudio's pure-Python `compliance.kaldi.fbank` and `functional.resample` are the functions the
official SemantiCodec code calls. Its compiled extension does not load beside CPU torch here, so the
extension module is replaced by an empty stand-in before the first import (shared/ENVIRONMENT.md).
"""

from __future__ import annotations

import sys
import types

import pytest


def torchaudio_reference():
    """Return torchaudio with only its pure-Python parts, or skip the calling test."""
    if "torchaudio._extension" not in sys.modules:
        stub = types.ModuleType("torchaudio._extension")
        stub._IS_TORCHAUDIO_EXT_AVAILABLE = False

        def _missing(name: str):
            if name.startswith("__"):
                raise AttributeError(name)
            return lambda *args, **kwargs: args[0] if args and callable(args[0]) else None

        stub.__getattr__ = _missing
        sys.modules["torchaudio._extension"] = stub
    try:
        import torchaudio.compliance.kaldi  # noqa: F401
        import torchaudio.functional  # noqa: F401
    except Exception as error:  # pragma: no cover - depends on the environment
        pytest.skip(f"torchaudio reference not importable: {error}")
    import torchaudio

    return torchaudio

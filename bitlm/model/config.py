"""The model's hyper-parameters: `BitLMConfig` (serialised as config.json, read back by
`read_config`, which also reads v1 files) and `byte_level_config`, the byte-level twin that the
equal-budget comparison trains beside a bit model.
"""
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

from bitlm.bits.frames import frame_bits

LOCALS = ("factorized", "transformer")
POSITIONS = ("alibi", "learned")
MAX_PATCH_SIZE = 12      # the pattern embedding has 2^patch_size rows


@dataclass
class BitLMConfig:
    """Model hyper-parameters (serialised as config.json). Generation and the codec slide the attention
    window without bound; a config.json without `pos` is a v1 one. Raises ValueError with the offending field
    when the combination is invalid."""
    patch_size: int = 9           # bits per patch: 9 = a parity-framed byte; 1 = a plain transformer over bits
    parity: bool = True           # the bits are 9-bit parity frames (stream type 0); needs patch_size 9
    block_size: int = 2304        # bits in one `forward` (training and evaluation windows), a multiple of patch_size
    n_layer: int = 4              # blocks of the global transformer over patches
    n_head: int = 4               # attention heads (also of the transformer local model)
    n_embd: int = 128             # width of the global transformer
    dropout: float = 0.0          # on the residual branches, in training only
    local: str = "factorized"     # "factorized": the exact 2^p-pattern distribution; "transformer": MEGABYTE-style
    local_layers: int = 2         # blocks of the transformer local model
    local_embd: int = 64          # width of the transformer local model
    n_stream_types: int = 2       # learned input-type embeddings: 0 raw bits, 1 a compressed codec stream
    pos: str = "alibi"            # "alibi" (relative, slides) or "learned" (v1: absolute over the block, restarts)
    attn_window: int = 0          # patch slots each slot attends to, itself included; 0 = the whole block

    def __post_init__(self) -> None:
        for f in fields(self):
            value, kind = getattr(self, f.name), f.type
            ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
            if not ok or (kind is not bool and isinstance(value, bool)):
                raise ValueError(f"BitLMConfig.{f.name} must be {kind.__name__}, got {value!r}")
        for name in ("patch_size", "block_size", "n_layer", "n_head", "n_embd", "local_layers", "local_embd", "n_stream_types"):
            if getattr(self, name) < 1:
                raise ValueError(f"BitLMConfig.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.patch_size > MAX_PATCH_SIZE:
            raise ValueError(f"BitLMConfig.patch_size must be ≤ {MAX_PATCH_SIZE} (2^p pattern embeddings), got {self.patch_size}")
        if self.parity and self.patch_size != 9:
            raise ValueError(f"parity framing needs patch_size 9 (one frame per patch), got {self.patch_size}; set parity=False")
        if self.block_size % self.patch_size:
            raise ValueError(f"block_size {self.block_size} must be a multiple of patch_size {self.patch_size}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} must be divisible by n_head {self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.local not in LOCALS:
            raise ValueError(f"local must be one of {LOCALS}, got {self.local!r}")
        if self.pos not in POSITIONS:
            raise ValueError(f"pos must be one of {POSITIONS}, got {self.pos!r}")
        if not 0 <= self.attn_window <= self.n_patches:
            raise ValueError(f"attn_window must be in [0, {self.n_patches}] patch slots (0 = the whole block), got {self.attn_window}")
        if self.pos == "learned" and self.attn_window not in (0, self.n_patches):
            raise ValueError("learned positions cannot slide: attn_window must be 0 with pos='learned'")
        if self.local == "transformer" and self.local_embd % self.n_head:
            raise ValueError(f"local_embd {self.local_embd} must be divisible by n_head {self.n_head}")

    @property
    def n_patches(self) -> int:
        """Global positions (patch slots) in a full context."""
        return self.block_size // self.patch_size

    @property
    def window(self) -> int:
        """Patch slots each slot attends to, itself included."""
        return self.attn_window or self.n_patches

    @classmethod
    def from_dict(cls, d: dict) -> "BitLMConfig":
        """Build from a dict (e.g. parsed config.json); unknown keys are a ValueError naming them."""
        if not isinstance(d, dict):
            raise ValueError(f"a BitLMConfig must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"keys unknown to BitLMConfig: {unknown}")
        return cls(**{"pos": "learned", **d})     # v1 config.json files predate `pos`


def byte_level_config(config: BitLMConfig) -> BitLMConfig:
    """The byte-level twin of a bit model: the same global transformer over the same bytes of context,
    with `patch_size=8, parity=False` and the factorized local model, i.e. a plain byte-level
    transformer (a 256-row embedding and a tied 256-way softmax head).

    Takes: a BitLMConfig (its context in bytes is block_size // frame bits, 9 with parity, else 8).
    Returns: the twin's BitLMConfig (from a factorized p=9 model, the parameters differ only by the
    pattern table: 512 vs 256 rows of n_embd).
    Raises: ValueError when the context holds no whole byte."""
    context_bytes = config.block_size // frame_bits(config.parity)
    if context_bytes < 1:
        raise ValueError(f"block_size {config.block_size} holds no whole byte; a byte-level twin needs at least one")
    return replace(config, patch_size=8, parity=False, local="factorized", block_size=8 * context_bytes)


def read_config(path: str | Path) -> BitLMConfig:
    """Read and validate a config.json written by save_pretrained.

    Returns the BitLMConfig. Raises ValueError naming the file when it is not UTF-8 JSON, not an
    object, has keys BitLMConfig does not know, or holds invalid values; OSError if unreadable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return BitLMConfig.from_dict(data)
    except (UnicodeDecodeError, ValueError, TypeError) as e:
        raise ValueError(f"{path} is not a BitLM config.json: {e}") from e

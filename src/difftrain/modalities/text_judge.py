"""The autoregressive judge of generated text: generative perplexity, as the masked-diffusion papers report it.

The judge is the token transformer made causal (models/token_transformer.py), of the size of the run's own network,
trained here on the dataset's training blocks. MDLM and SEDD judge with GPT-2 Large; offline and at this scale, a
judge trained on the same data is what can be had, and its perplexity of real text it never saw (the floor) says how
good a judge it is. It learns without the floor pool (evaluation/reference.py), so the floor is held-out text to it.
Trained once per dataset, network size and budget, and cached beside the dataset (DATASET/judge/).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from difftrain import atomic
from difftrain.config import TokenTransformerConfig
from difftrain.models.token_transformer import TokenTransformer


def _inputs(model: TokenTransformer, x: torch.Tensor) -> torch.Tensor:
    """Each position sees the tokens before it: the sequence shifted right behind the start id (V)."""
    return torch.cat([torch.full((len(x), 1), model.vocab_size, dtype=torch.long, device=x.device), x[:, :-1]], dim=1)


def token_nats(model: TokenTransformer, blocks: np.ndarray, pad_id: int | None = None, batch: int = 64) -> np.ndarray:
    """-log p of every token of the blocks under the judge (N, L), each given the start and the tokens before it;
    NaN at padding, which is not text."""
    out = []
    with torch.no_grad():
        for i in range(0, len(blocks), batch):
            x = torch.as_tensor(np.asarray(blocks[i:i + batch])).long()
            nats = F.cross_entropy(model(_inputs(model, x), torch.zeros(len(x)), None).float().transpose(1, 2), x,
                                   reduction="none")
            out.append(torch.where(x == pad_id, torch.nan, nats).numpy() if pad_id is not None else nats.numpy())
    return np.concatenate(out) if out else np.zeros((0, blocks.shape[1]))


def perplexity(model: TokenTransformer, blocks: np.ndarray, pad_id: int | None = None) -> float:
    """exp of the mean nats per token over all tokens of the blocks (the corpus-level generative perplexity)."""
    return float(np.exp(np.nanmean(token_nats(model, blocks, pad_id))))


def fit_judge(train: np.ndarray, vocab_size: int, cfg: TokenTransformerConfig, *, steps: int, batch: int = 32,
              lr: float = 1e-3, warmup: int = 100, seed: int = 0, pad_id: int | None = None, precision: str = "no",
              say: Callable[[str], None] | None = None) -> TokenTransformer:
    """An autoregressive transformer of `cfg`'s size trained for `steps` AdamW steps (linear warmup) on random
    blocks of `train`; `say` hears how it goes about ten times."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TokenTransformer(vocab_size, 0, cfg, causal=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        x = torch.as_tensor(np.asarray(train[torch.randint(len(train), (batch,), generator=generator).numpy()])).long()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(_inputs(model, x), torch.zeros(batch), None)
        loss = F.cross_entropy(logits.float().transpose(1, 2), x, ignore_index=-100 if pad_id is None else pad_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        done = step + 1
        if say is not None and (done % max(1, steps // 10) == 0 or done == steps):
            elapsed = time.perf_counter() - start
            say(f"judge: step {done}/{steps}, loss {loss.item():.3f} nats/token, "
                f"{elapsed * (steps - done) / done:.0f} s left")
    return model.eval()


def load_or_fit_judge(dataset, cfg: TokenTransformerConfig, *, steps: int, train_index: np.ndarray, seed: int = 0,
                      say: Callable[[str], None] | None = None) -> tuple[TokenTransformer, dict]:
    """The dataset's cached judge for this size and budget, trained (on `train_index`'s blocks) and saved on first use."""
    modality = dataset.modality
    key = hashlib.sha256(json.dumps([dataset.manifest.get("source", {}).get("sha256"), dataset.manifest.get("count"),
                                     cfg.model_dump(), steps, seed, len(train_index)]).encode()).hexdigest()[:12]
    folder = Path(dataset.path) / "judge"
    weights, meta_file = folder / f"judge-{key}.safetensors", folder / f"judge-{key}.json"
    model = TokenTransformer(modality.vocab_size, 0, cfg, causal=True)
    if weights.is_file() and meta_file.is_file():
        try:
            model.load_state_dict(load_file(weights))
            return model.eval(), json.loads(meta_file.read_text())
        except (OSError, ValueError, RuntimeError):
            pass  # a damaged cache is trained again and replaced
    if say is not None:
        say(f"training the autoregressive judge of generated text ({sum(p.numel() for p in model.parameters()):,} "
            f"parameters, {steps} steps; once per dataset, cached in {folder})")
    model = fit_judge(dataset.train_data[train_index], modality.vocab_size, cfg, steps=steps, seed=seed,
                      pad_id=modality.pad_id, say=say)
    meta = {"name": "difftrain-autoregressive-judge", "steps": steps, "seed": seed, "parameters": sum(p.numel() for p in model.parameters()),
            "trained_blocks": int(len(train_index))}
    try:
        with atomic.atomic_file(weights) as tmp:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
        atomic.write_json(meta_file, meta)
    except OSError:
        pass  # a read-only dataset folder: use the judge without caching it
    return model, meta


def bits_per_token(nats: np.ndarray) -> float:
    return float(np.nanmean(nats) / math.log(2))

"""Sequence to sequence with the book's encoder-decoder: training, greedy decoding, beam search, cross-attention.

003 §4.3 (case 2, machine translation) describes the model in five steps: embed the source, encode it, let the
decoder "generate the target word by word", train with cross-entropy, optimise. Here that is
:class:`labkit.transformer.EncoderDecoder` on the offline number-words task of :func:`labkit.data.translation_task`:

* :func:`encode` / :func:`decode` -- the two halves of ``EncoderDecoder.forward``, so that decoding runs the
  encoder once per sentence;
* :func:`train_translator`, :func:`train_or_load_translator` -- teacher forcing: the decoder reads
  ``<bos> y_1 .. y_m`` and predicts ``y_1 .. y_m <eos>`` (cross-entropy, padding ignored);
* :func:`greedy_decode` and :func:`beam_search` (with length normalisation), :func:`translate`;
* :func:`cross_attention_maps` -- what each target position reads in the source;
* :func:`evaluate_translation` -- BLEU, chrF and exact match from :mod:`labkit.metrics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit import metrics, train
from labkit.config import Profile, get_profile
from labkit.data import TranslationTask, WordTokenizer, translation_tensors
from labkit.train import _evaluating
from labkit.transformer import EncoderDecoder, TransformerConfig

__all__ = [
    "translator_config",
    "translator_settings",
    "encode",
    "decode",
    "sequence_loss",
    "evaluate_teacher_forced",
    "train_translator",
    "train_or_load_translator",
    "greedy_decode",
    "beam_search",
    "translate",
    "copy_source_baseline",
    "evaluate_translation",
    "cross_attention_maps",
]


# ----------------------------------------------------------------------------------------------------------
# the model and its two halves
# ----------------------------------------------------------------------------------------------------------


def translator_config(task: TranslationTask, profile: Profile | None = None, **overrides: Any) -> TransformerConfig:
    """The encoder-decoder for ``task``: sizes from the profile's ``ch12_mt_*`` keys, pre-norm, learned positions,
    shared (tied) embeddings over the joint word vocabulary, ``pad_id`` set so padding is masked."""
    profile = profile or get_profile()
    d_model = profile.get("ch12_mt_d_model", 64)
    fields = {"vocab_size": task.tokenizer.vocab_size, "d_model": d_model,
              "n_heads": profile.get("ch12_mt_heads", 4), "n_layers": profile.get("ch12_mt_layers", 2),
              "d_ff": profile.get("ch12_mt_d_ff", 4 * d_model),
              "max_len": max(task.max_source_len, task.max_target_len + 1) + 4,
              "pad_id": task.tokenizer.pad_id}
    fields.update(overrides)
    return TransformerConfig(**fields)


def translator_settings(profile: Profile | None = None, **overrides: Any) -> dict[str, Any]:
    """Training settings of the translator in a profile (``ch12_mt_steps``, ``_batch_size``, ``_lr``)."""
    profile = profile or get_profile()
    steps = profile.get("ch12_mt_steps", 600)
    settings = {"steps": steps, "batch_size": profile.get("ch12_mt_batch_size", 64),
                "lr": profile.get("ch12_mt_lr", 1e-3), "eval_every": max(1, steps // 10), "seed": 0}
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise TypeError(f"unknown training setting(s) {unknown}; expected some of {sorted(settings)}")
    settings.update(overrides)
    return settings


def _check_model(model: Any) -> EncoderDecoder:
    if not isinstance(model, EncoderDecoder):
        raise TypeError(f"model must be a labkit.transformer.EncoderDecoder, got {type(model).__name__}")
    return model


def _source_padding(model: EncoderDecoder, src: Tensor, src_padding_mask: Tensor | None) -> Tensor | None:
    if not isinstance(src, Tensor) or src.dim() != 2 or src.is_floating_point():
        raise ValueError(f"src must be a (B, S) tensor of token ids, got {getattr(src, 'shape', type(src).__name__)}")
    if src_padding_mask is not None:
        if not isinstance(src_padding_mask, Tensor) or src_padding_mask.dtype != torch.bool \
                or src_padding_mask.shape != src.shape:
            raise ValueError(f"src_padding_mask must be a bool tensor of shape {tuple(src.shape)} (True = pad), "
                             f"got {getattr(src_padding_mask, 'shape', src_padding_mask)}")
        return src_padding_mask
    return None if model.config.pad_id is None else src == model.config.pad_id


def encode(model: EncoderDecoder, src: Tensor, src_padding_mask: Tensor | None = None) -> Tensor:
    """The encoder's memory (B, S, d_model): one vector per source token, padding masked as keys."""
    model = _check_model(model)
    padding = _source_padding(model, src, src_padding_mask)
    return model.encoder(model.embed(src), key_padding_mask=padding)


def decode(model: EncoderDecoder, tgt: Tensor, memory: Tensor, src_padding_mask: Tensor | None = None) -> Tensor:
    """Next-token logits (B, T, vocab) for the target prefix ``tgt`` (B, T) given the encoder ``memory``:
    causal self-attention over ``tgt``, cross-attention over ``memory`` (source padding masked). Together with
    :func:`encode` this is exactly ``model(src, tgt)`` (target padding matters only for positions after it)."""
    model = _check_model(model)
    hidden = model.decoder(model.embed(tgt), memory, memory_key_padding_mask=src_padding_mask, tgt_is_causal=True)
    return model.lm_head(hidden)


# ----------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------


def sequence_loss(logits: Tensor, targets: Tensor, pad_id: int | None, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy over the target tokens that are not padding: ``-(1/N) sum log p(y_t | y_<t, x)``."""
    if logits.dim() != 3 or logits.shape[:2] != targets.shape:
        raise ValueError(f"logits must be (B, T, V) matching targets {tuple(targets.shape)}, "
                         f"got {tuple(logits.shape)}")
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                           ignore_index=-100 if pad_id is None else pad_id, label_smoothing=label_smoothing)


def evaluate_teacher_forced(model: EncoderDecoder, tensors: dict[str, Tensor], batch_size: int = 256,
                            ) -> dict[str, float]:
    """``{"loss": mean token cross-entropy, "accuracy": fraction of target tokens predicted right}`` with the
    reference prefix fed to the decoder (teacher forcing), padding left out; eval mode, no gradients."""
    model = _check_model(model)
    device = next(model.parameters()).device
    pad = model.config.pad_id
    total_loss, correct, count = 0.0, 0, 0
    with _evaluating(model):
        for start in range(0, tensors["src"].size(0), batch_size):
            part = {k: v[start:start + batch_size].to(device) for k, v in tensors.items()}
            logits = model(part["src"], part["tgt_in"], part["src_padding"])
            keep = ~part["tgt_padding"]
            n = int(keep.sum())
            total_loss += float(sequence_loss(logits, part["tgt_out"], pad)) * n
            correct += int(((logits.argmax(-1) == part["tgt_out"]) & keep).sum())
            count += n
    return {"loss": total_loss / count, "accuracy": correct / count}


def train_translator(model: EncoderDecoder, task: TranslationTask, *, steps: int, batch_size: int, lr: float,
                     eval_every: int | None = None, weight_decay: float = 0.01, label_smoothing: float = 0.0,
                     device: str | torch.device | None = None, progress: bool = True, seed: int = 0,
                     on_step: Callable[[int, float], None] | None = None,
                     on_eval: Callable[[int, dict[str, float]], None] | None = None) -> train.History:
    """Teacher-forced training on ``task``'s training pairs (AdamW via :func:`labkit.train.fit`); validation
    loss and token accuracy every ``eval_every`` steps. ``on_step(step, loss)`` and ``on_eval(step, metrics)``
    are called as training goes (a live plot hooks in here). Deterministic given ``seed``."""
    model = _check_model(model)
    torch.manual_seed(seed)
    if device is not None:
        model.to(device)
    dev = next(model.parameters()).device
    tensors = translation_tensors(task.train_pairs, task.tokenizer)
    val_tensors = translation_tensors(task.val_pairs, task.tokenizer)
    generator = torch.Generator().manual_seed(seed)
    n = tensors["src"].size(0)
    step = 0

    def batches() -> Iterator[tuple[tuple[Tensor, Tensor, Tensor], Tensor]]:
        while True:
            rows = torch.randint(n, (batch_size,), generator=generator)
            yield (tensors["src"][rows].to(dev), tensors["tgt_in"][rows].to(dev),
                   tensors["src_padding"][rows].to(dev)), tensors["tgt_out"][rows].to(dev)

    def loss_fn(module: nn.Module, inputs: tuple[Tensor, Tensor, Tensor], targets: Tensor) -> Tensor:
        nonlocal step
        step += 1
        loss = sequence_loss(module(*inputs), targets, model.config.pad_id, label_smoothing)
        if on_step is not None:
            on_step(step, float(loss.detach()))
        return loss

    def evaluate() -> dict[str, float]:
        result = evaluate_teacher_forced(model, val_tensors)
        if on_eval is not None:
            on_eval(step, result)
        return result

    optimizer = train._default_optimizer(model, lr, weight_decay)
    return train.fit(model, batches(), loss_fn, steps=steps, optimizer=optimizer, evaluate=evaluate,
                     eval_every=eval_every, progress=progress, desc="training translator")


def train_or_load_translator(task: TranslationTask, config: TransformerConfig, settings: dict[str, Any], *,
                             name: str = "translator", profile: Profile | None = None,
                             device: str | torch.device | None = None, progress: bool = True,
                             on_step: Callable[[int, float], None] | None = None,
                             on_eval: Callable[[int, dict[str, float]], None] | None = None,
                             ) -> tuple[EncoderDecoder, train.History, bool]:
    """Train an EncoderDecoder(``config``) on ``task`` with ``settings``, or load the cached checkpoint:
    ``(model, history, loaded_from_cache)`` (see :func:`labkit.train.cached_train`; the callbacks run only
    when it trains)."""
    profile = profile or get_profile()
    key = {"name": name, "config": config.to_dict(), "data": task.key, "profile": profile.name, **settings}

    def build() -> nn.Module:
        torch.manual_seed(settings["seed"])
        return EncoderDecoder(config)

    def run(model: nn.Module) -> train.History:
        return train_translator(model, task, steps=settings["steps"], batch_size=settings["batch_size"],
                                lr=settings["lr"], eval_every=settings["eval_every"], device=device,
                                progress=progress, seed=settings["seed"], on_step=on_step, on_eval=on_eval)

    return train.cached_train(key, build, run, device=device)


# ----------------------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------------------


def _check_decoding(model: Any, src: Tensor, bos_id: Any, eos_id: Any, max_len: Any) -> EncoderDecoder:
    model = _check_model(model)
    vocab = model.config.vocab_size
    for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab:
            raise ValueError(f"{name} must be a token id in [0, {vocab}), got {value!r}")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or not 1 <= max_len < model.config.max_len:
        raise ValueError(f"max_len must be an int in [1, {model.config.max_len - 1}] (the model's max_len minus the "
                         f"<bos>), got {max_len!r}")
    return model


def greedy_decode(model: EncoderDecoder, src: Tensor, src_padding_mask: Tensor | None = None, *, bos_id: int,
                  eos_id: int, max_len: int) -> list[list[int]]:
    """Greedy decoding: start from ``<bos>``, append ``argmax_y p(y | prefix, x)`` until ``<eos>`` or ``max_len``
    tokens. Returns one token list per source sentence, without ``<bos>`` and ``<eos>``. The prefix is
    recomputed at every step (no cache: these sentences are a dozen tokens long)."""
    model = _check_decoding(model, src, bos_id, eos_id, max_len)
    with _evaluating(model):
        padding = _source_padding(model, src, src_padding_mask)
        memory = encode(model, src, padding)
        ys = torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
        for _ in range(max_len):
            next_token = decode(model, ys, memory, padding)[:, -1].argmax(-1)
            next_token = next_token.masked_fill(done, eos_id)
            ys = torch.cat([ys, next_token[:, None]], dim=1)
            done |= next_token == eos_id
            if bool(done.all()):
                break
    return [_strip(row, eos_id) for row in ys[:, 1:].tolist()]


def _strip(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[:tokens.index(eos_id)] if eos_id in tokens else tokens


@dataclass
class _Hypothesis:
    tokens: list[int]
    log_prob: float
    score: float


def beam_search(model: EncoderDecoder, src: Tensor, src_padding_mask: Tensor | None = None, *, bos_id: int,
                eos_id: int, max_len: int, beam_size: int = 4, length_penalty: float = 1.0,
                ) -> tuple[list[list[int]], list[float]]:
    """Beam search: keep the ``beam_size`` most probable prefixes; each step extends every prefix by every token
    and keeps the best ``beam_size`` unfinished ones by total log-probability, moving those that end in
    ``<eos>`` to a finished list. It stops when ``beam_size`` hypotheses are finished (or at ``max_len``) and
    returns the finished one with the best length-normalised score ``log p(y | x) / |y|^alpha`` (``alpha`` =
    ``length_penalty``; |y| counts ``<eos>``; alpha = 0 is the raw log-probability, which favours short
    outputs). Returns the token lists (without ``<bos>``/``<eos>``) and their scores. With ``beam_size=1`` it
    is greedy decoding."""
    model = _check_decoding(model, src, bos_id, eos_id, max_len)
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size must be a positive int, got {beam_size!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) or length_penalty < 0:
        raise ValueError(f"length_penalty must be a number >= 0, got {length_penalty!r}")
    batch, k = src.size(0), beam_size
    with _evaluating(model):
        padding = _source_padding(model, src, src_padding_mask)
        memory = encode(model, src, padding).repeat_interleave(k, dim=0)  # (B*K, S, d)
        padding = None if padding is None else padding.repeat_interleave(k, dim=0)
        beams = torch.full((batch * k, 1), bos_id, dtype=torch.long, device=src.device)
        scores = torch.full((batch, k), -math.inf, dtype=torch.float64, device=src.device)
        scores[:, 0] = 0.0  # at the start all K beams are the same <bos>: expand only one
        finished: list[list[_Hypothesis]] = [[] for _ in range(batch)]
        done = [False] * batch

        def normalised(log_prob: float, length: int) -> float:
            return log_prob / (length**length_penalty)

        for step in range(1, max_len + 1):
            log_probs = torch.log_softmax(decode(model, beams, memory, padding)[:, -1].double(), dim=-1)
            vocab = log_probs.size(-1)
            candidates = (scores[:, :, None] + log_probs.view(batch, k, vocab)).view(batch, k * vocab)
            top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=-1)  # enough to refill K beams
            prefixes = beams[:, 1:].tolist()
            rows, tokens, new_scores = list(range(batch * k)), [eos_id] * (batch * k), [-math.inf] * (batch * k)
            for b, (row_scores, row_index) in enumerate(zip(top_scores.tolist(), top_index.tolist())):
                if done[b]:
                    continue
                filled = 0
                for score, index in zip(row_scores, row_index):
                    if score == -math.inf:
                        break
                    origin, token = divmod(index, vocab)
                    if token == eos_id:
                        finished[b].append(_Hypothesis(prefixes[b * k + origin], score, normalised(score, step)))
                        if len(finished[b]) >= k:
                            break
                        continue
                    slot = b * k + filled
                    rows[slot], tokens[slot], new_scores[slot] = b * k + origin, token, score
                    filled += 1
                    if filled == k:
                        break
                done[b] = len(finished[b]) >= k
            if all(done):
                break
            beams = torch.cat([beams[torch.tensor(rows, device=beams.device)],
                               torch.tensor(tokens, device=beams.device)[:, None]], dim=1)
            scores = torch.tensor(new_scores, dtype=torch.float64, device=src.device).view(batch, k)
        for b in range(batch):  # sentences that reached max_len: their live beams compete too
            if not done[b]:
                for j in range(k):
                    if scores[b, j] > -math.inf:
                        log_prob = float(scores[b, j])
                        finished[b].append(_Hypothesis(beams[b * k + j, 1:].tolist(), log_prob,
                                                       normalised(log_prob, beams.size(1) - 1)))
    best = [max(hyps, key=lambda h: h.score) for hyps in finished]
    return [h.tokens for h in best], [h.score for h in best]


def translate(model: EncoderDecoder, sources: Sequence[str], tokenizer: WordTokenizer, *, beam_size: int = 1,
              length_penalty: float = 1.0, max_len: int | None = None, batch_size: int = 256) -> list[str]:
    """Translate ``sources``: greedy decoding for ``beam_size=1``, else beam search; returns the decoded strings."""
    model = _check_model(model)
    if isinstance(sources, str) or not isinstance(sources, Sequence) or not sources:
        raise ValueError("sources must be a non-empty list of strings")
    max_len = max_len or model.config.max_len - 1
    device = next(model.parameters()).device
    out: list[str] = []
    for start in range(0, len(sources), batch_size):
        part = translation_tensors([(s, "") for s in sources[start:start + batch_size]], tokenizer)
        src, padding = part["src"].to(device), part["src_padding"].to(device)
        ids_kwargs = {"bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "max_len": max_len}
        if beam_size == 1:
            rows = greedy_decode(model, src, padding, **ids_kwargs)
        else:
            rows, _ = beam_search(model, src, padding, beam_size=beam_size, length_penalty=length_penalty,
                                  **ids_kwargs)
        out += [tokenizer.decode(row) for row in rows]
    return out


def copy_source_baseline(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """The trivial translator: output the source unchanged (what BLEU and chrF give for doing nothing)."""
    return [source for source, _ in pairs]


def evaluate_translation(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """``{"bleu", "chrf", "exact"}``: corpus BLEU (0-100), corpus chrF (0-100) and the fraction of sentences
    that equal their reference exactly."""
    return {"bleu": metrics.corpus_bleu(hypotheses, references).score,
            "chrf": metrics.corpus_chrf(hypotheses, references),
            "exact": sum(h == r for h, r in zip(hypotheses, references)) / len(references)}


# ----------------------------------------------------------------------------------------------------------
# cross-attention maps
# ----------------------------------------------------------------------------------------------------------


def cross_attention_maps(model: EncoderDecoder, src: Tensor, tgt: Tensor, src_padding_mask: Tensor | None = None,
                         ) -> tuple[Tensor, list[Tensor]]:
    """``(logits, maps)``: the model's logits for ``(src, tgt)`` and, per decoder layer, the cross-attention
    weights (B, H, T, S): row t is how target position t spreads its attention over the source tokens.

    The weights come from the model's own cross-attention modules (forward hooks ask them for per-head weights
    and remove themselves afterwards), so they are exactly what the forward pass used."""
    model = _check_model(model)
    maps: list[Tensor] = []

    def ask_for_weights(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def keep_weights(module: nn.Module, args: tuple, kwargs: dict, output: tuple[Tensor, Tensor]) -> None:
        maps.append(output[1].detach())

    handles = []
    try:
        for layer in model.decoder.layers:
            handles.append(layer.cross_attn.register_forward_pre_hook(ask_for_weights, with_kwargs=True))
            handles.append(layer.cross_attn.register_forward_hook(keep_weights, with_kwargs=True))
        with _evaluating(model):
            padding = _source_padding(model, src, src_padding_mask)
            logits = model(src, tgt, padding)
    finally:
        for handle in handles:
            handle.remove()
    return logits, maps

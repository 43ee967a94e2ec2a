"""labkit.seq2seq: encode/decode equal the model's forward, beam search with beam 1 is greedy, beam search finds
better-scoring outputs than greedy, cross-attention maps are the weights the forward pass used, training learns."""

from __future__ import annotations

import math

import pytest
import torch

from labkit import data, seq2seq
from labkit.config import get_profile
from labkit.transformer import EncoderDecoder, GPT, TransformerConfig

TASK = data.translation_task(400, 40, 40, seed=0)


def small_model(seed: int = 0, **overrides) -> EncoderDecoder:
    torch.manual_seed(seed)
    config = seq2seq.translator_config(TASK, get_profile("smoke"), **{"d_model": 32, "n_heads": 2, "n_layers": 2,
                                                                      "d_ff": 64, **overrides})
    model = EncoderDecoder(config).eval()
    with torch.no_grad():  # larger random weights: peaked, varied distributions make decoding tests meaningful
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(8.0)
    return model


def batch(n: int = 6):
    t = data.translation_tensors(TASK.test_pairs[:n], TASK.tokenizer)
    return t["src"], t["src_padding"], t


def ids_kwargs(max_len: int = 8):
    tok = TASK.tokenizer
    return {"bos_id": tok.bos_id, "eos_id": tok.eos_id, "max_len": max_len}


def test_encode_decode_equal_forward():
    model = small_model()
    src, padding, t = batch()
    with torch.no_grad():
        full = model(src, t["tgt_in"], padding)
        split = seq2seq.decode(model, t["tgt_in"], seq2seq.encode(model, src, padding), padding)
        # where the target has no padding yet, the two agree exactly
        keep = ~t["tgt_padding"]
        torch.testing.assert_close(split[keep], full[keep], rtol=1e-5, atol=1e-5)
        # padding is inferred from pad_id when no mask is given
        torch.testing.assert_close(seq2seq.encode(model, src), seq2seq.encode(model, src, padding))


def test_beam_one_equals_greedy():
    for seed in (0, 3):
        model = small_model(seed)
        src, padding, _ = batch(8)
        greedy = seq2seq.greedy_decode(model, src, padding, **ids_kwargs())
        beam, scores = seq2seq.beam_search(model, src, padding, beam_size=1, **ids_kwargs())
        assert beam == greedy
        assert all(math.isfinite(s) for s in scores)
    assert any(len(row) < 8 for row in greedy)  # some sentences stopped at <eos>, some ran to max_len


def _log_prob(model, src_row, tokens, eos_id, bos_id, finished=True):
    """log p(tokens [+ <eos>] | src) by teacher forcing, the score beam search maximises."""
    target = tokens + ([eos_id] if finished else [])
    tgt_in = torch.tensor([[bos_id] + target[:-1]])
    with torch.no_grad():
        logits = model(src_row[None], tgt_in)
    return float(torch.log_softmax(logits[0].double(), -1)[torch.arange(len(target)), target].sum())


def test_beam_scores_are_normalised_log_probs_and_beat_greedy():
    tok = TASK.tokenizer
    model = small_model(1)
    src, padding, _ = batch(8)
    kw = ids_kwargs(6)
    greedy = seq2seq.greedy_decode(model, src, padding, **kw)
    wins = 0
    for alpha in (0.0, 1.0):
        beam, scores = seq2seq.beam_search(model, src, padding, beam_size=5, length_penalty=alpha, **kw)
        for i in range(src.size(0)):
            finished = len(beam[i]) < kw["max_len"]
            log_p = _log_prob(model, src[i], beam[i], tok.eos_id, tok.bos_id, finished)
            length = len(beam[i]) + (1 if finished else 0)
            assert scores[i] == pytest.approx(log_p / length**alpha, rel=1e-6, abs=1e-6)
            if alpha == 0.0:
                greedy_score = _log_prob(model, src[i], greedy[i], tok.eos_id, tok.bos_id,
                                         len(greedy[i]) < kw["max_len"])
                assert scores[i] >= greedy_score - 1e-4  # beam search does no worse than greedy here
                wins += scores[i] > greedy_score + 1e-4
    assert wins >= 1  # and on some sentence it finds a more probable output


def test_length_penalty_changes_the_choice_towards_longer_outputs():
    model = small_model(2)
    src, padding, _ = batch(16)
    short, _ = seq2seq.beam_search(model, src, padding, beam_size=6, length_penalty=0.0, **ids_kwargs(8))
    long, _ = seq2seq.beam_search(model, src, padding, beam_size=6, length_penalty=2.0, **ids_kwargs(8))
    assert sum(map(len, long)) >= sum(map(len, short))


def test_cross_attention_maps():
    model = small_model()
    src, padding, t = batch(5)
    logits, maps = seq2seq.cross_attention_maps(model, src, t["tgt_in"], padding)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(src, t["tgt_in"], padding))  # the hooks change nothing
    assert len(maps) == model.config.n_layers
    for weights in maps:
        assert weights.shape == (5, model.config.n_heads, t["tgt_in"].size(1), src.size(1))
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
        assert (weights.masked_select(padding[:, None, None, :].expand_as(weights)) == 0).all()  # pads get nothing
    # and they are what the layer computes: query/key projections of the layer's inputs
    layer = model.decoder.layers[0]
    captured = {}
    hook = layer.cross_attn.register_forward_hook(lambda m, args, out: captured.update(q=args[0], k=args[1]))
    with torch.no_grad():
        model(src, t["tgt_in"], padding)
    hook.remove()
    attn = layer.cross_attn
    heads, d_head = attn.num_heads, attn.embed_dim // attn.num_heads
    q = attn.q_proj(captured["q"]).view(5, -1, heads, d_head).transpose(1, 2)
    k = attn.k_proj(captured["k"]).view(5, -1, heads, d_head).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(d_head)).masked_fill(padding[:, None, None, :], -math.inf)
    torch.testing.assert_close(maps[0], torch.softmax(scores, -1), rtol=1e-5, atol=1e-6)
    assert not layer.cross_attn._forward_hooks and not layer.cross_attn._forward_pre_hooks


def test_training_learns_the_task_and_callbacks_fire():
    torch.manual_seed(0)
    config = seq2seq.translator_config(TASK, get_profile("smoke"), d_model=32, n_heads=2, n_layers=1, d_ff=64)
    model = EncoderDecoder(config)
    steps, evals = [], []
    history = seq2seq.train_translator(model, TASK, steps=30, batch_size=32, lr=1e-2, eval_every=15, progress=False,
                                       on_step=lambda s, loss: steps.append((s, loss)),
                                       on_eval=lambda s, m: evals.append((s, m)))
    assert [s for s, _ in steps] == list(range(1, 31)) and [s for s, _ in evals] == [15, 30]
    assert [loss for _, loss in steps] == pytest.approx(history.loss)
    initial = math.log(config.vocab_size)  # the loss of a uniform guess over the vocabulary
    assert history.loss[0] == pytest.approx(initial, rel=0.3)
    assert history.val_loss[30] < history.val_loss[15] < 0.75 * initial
    assert history.val_accuracy[30] > 0.2  # chance over ~65 words is ~0.02


def test_translate_and_evaluate_translation():
    model = small_model()
    sources = [s for s, _ in TASK.test_pairs[:4]]
    greedy = seq2seq.translate(model, sources, TASK.tokenizer, max_len=6)
    beam = seq2seq.translate(model, sources, TASK.tokenizer, beam_size=3, max_len=6, batch_size=2)
    assert len(greedy) == len(beam) == 4 and all(isinstance(s, str) for s in greedy + beam)
    refs = [t for _, t in TASK.test_pairs[:4]]
    perfect = seq2seq.evaluate_translation(refs, refs)
    assert perfect == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0), "exact": 1.0}
    copy = seq2seq.evaluate_translation(seq2seq.copy_source_baseline(TASK.test_pairs[:4]), refs)
    assert copy["exact"] == 0.0 and copy["bleu"] < 10


def test_bad_input():
    model = small_model()
    src, padding, _ = batch(2)
    with pytest.raises(TypeError, match="EncoderDecoder"):
        seq2seq.greedy_decode(GPT(TransformerConfig(vocab_size=10)), src, **ids_kwargs())
    with pytest.raises(ValueError, match="beam_size"):
        seq2seq.beam_search(model, src, padding, beam_size=0, **ids_kwargs())
    with pytest.raises(ValueError, match="length_penalty"):
        seq2seq.beam_search(model, src, padding, length_penalty=-1, **ids_kwargs())
    with pytest.raises(ValueError, match="max_len"):
        seq2seq.greedy_decode(model, src, padding, **{**ids_kwargs(), "max_len": 10_000})
    with pytest.raises(ValueError, match="eos_id"):
        seq2seq.greedy_decode(model, src, padding, **{**ids_kwargs(), "eos_id": -1})
    with pytest.raises(ValueError, match="src_padding_mask"):
        seq2seq.encode(model, src, padding[:, :1])
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        seq2seq.encode(model, src[0])
    with pytest.raises(ValueError, match="non-empty"):
        seq2seq.translate(model, [], TASK.tokenizer)
    with pytest.raises(TypeError, match="unknown training setting"):
        seq2seq.translator_settings(get_profile("smoke"), epochs=3)

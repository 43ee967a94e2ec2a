"""labkit.train: loops that learn, evaluation in eval mode, atomic checkpoints and "train it or load it"."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import labkit
from labkit import train
from labkit.bench import PROGRESS_ENV
from labkit.train import History, cached_train, load_checkpoint, save_checkpoint

VOCAB = 11


class TinyLM(nn.Module):
    """A bigram model: embedding then a linear read-out, logits (B, T, V)."""

    def __init__(self, vocab_size: int = VOCAB, d_model: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.head = nn.Linear(d_model, vocab_size)
        self.seen_modes: list[tuple[bool, bool]] = []

    def forward(self, idx):
        self.seen_modes.append((self.training, torch.is_grad_enabled()))
        return self.head(self.embed(idx))


class TinyClassifier(nn.Module):
    """Mean of token embeddings over non-pad positions, then a linear layer."""

    def __init__(self, vocab_size: int = VOCAB, n_classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 8)
        self.head = nn.Linear(8, n_classes)

    def forward(self, idx, padding_mask=None):
        keep = torch.ones_like(idx, dtype=torch.float) if padding_mask is None else (~padding_mask).float()
        pooled = (self.embed(idx) * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
        return self.head(pooled)


def bigram_tokens(n: int = 600) -> torch.Tensor:
    """A stream where each token determines the next: t -> (3t + 1) mod V."""
    tokens = [0]
    for _ in range(n - 1):
        tokens.append((3 * tokens[-1] + 1) % VOCAB)
    return torch.tensor(tokens)


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "0")


def lm_run(seed: int = 0, steps: int = 60, **kwargs):
    torch.manual_seed(123)
    model = TinyLM()
    tokens = bigram_tokens()
    history = train.train_language_model(model, tokens[:500], steps=steps, batch_size=8, seq_len=16, lr=3e-2,
                                         val_tokens=tokens[500:], eval_every=20, eval_batches=2, seed=seed, **kwargs)
    return model, history


# ---------------------------------------------------------------------------------------------- language models


def test_language_model_learns_a_bigram_stream():
    model, history = lm_run()
    assert history.step == list(range(1, 61))
    assert history.loss[0] > 2.0 and history.final_loss < 0.3 * history.loss[0]
    assert sorted(history.val_loss) == [20, 40, 60]
    assert history.val_loss[60] < history.val_loss[20] and history.final_val_loss == history.val_loss[60]
    assert len(history.tokens_per_s) == 60 and min(history.tokens_per_s) > 0
    assert all(b >= a for a, b in zip(history.wall_s, history.wall_s[1:]))
    assert model.training  # back in training mode after the evaluations


def test_training_is_deterministic_given_the_seed():
    model_a, history_a = lm_run(seed=1, steps=10)
    model_b, history_b = lm_run(seed=1, steps=10)
    model_c, history_c = lm_run(seed=2, steps=10)
    assert history_a.loss == history_b.loss and history_a.val_loss == history_b.val_loss
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.equal(a, b)
    assert history_a.loss != history_c.loss


def test_evaluate_lm_runs_without_grad_in_eval_mode_and_restores_mode():
    model = TinyLM()
    tokens = bigram_tokens(200)
    loss = train.evaluate_lm(model, tokens, batch_size=4, seq_len=8, n_batches=2)
    assert set(model.seen_modes) == {(False, False)}
    assert model.training
    assert loss == pytest.approx(math.log(VOCAB), rel=0.3)
    model.eval()
    train.evaluate_lm(model, tokens, batch_size=4, seq_len=8, n_batches=1)
    assert not model.training


def test_evaluate_lm_is_the_mean_over_tokens():
    model = TinyLM()
    tokens = bigram_tokens(41)  # 40 targets = 5 windows of 8
    with torch.no_grad():
        logits = model(tokens[:40].view(5, 8))
        expected = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[1:41])
    assert train.evaluate_lm(model, tokens, batch_size=2, seq_len=8) == pytest.approx(float(expected), rel=1e-5)


def test_gradient_clipping_bounds_the_update():
    def update_norm(grad_clip):
        torch.manual_seed(0)
        model = TinyLM()
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        train.train_language_model(model, bigram_tokens(), steps=1, batch_size=4, seq_len=8, lr=1.0,
                                   optimizer=optimizer, grad_clip=grad_clip)
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        return float((after - before).norm())

    assert update_norm(1e-3) == pytest.approx(1e-3, rel=1e-3)
    assert update_norm(None) > 1e-2


def test_progress_bar_can_be_turned_off(monkeypatch, capsys):
    monkeypatch.setenv(PROGRESS_ENV, "1")
    lm_run(steps=3, progress=True)
    assert "training LM" in capsys.readouterr().err
    lm_run(steps=3, progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(PROGRESS_ENV, "0")
    lm_run(steps=3, progress=True)
    assert capsys.readouterr().err == ""


def test_diverging_loss_stops_with_a_clear_error():
    model = TinyLM()
    with torch.no_grad():
        model.head.bias.fill_(math.nan)
    with pytest.raises(FloatingPointError, match="step 1"):
        train.train_language_model(model, bigram_tokens(), steps=2, batch_size=2, seq_len=4, lr=1e-3)


@pytest.mark.parametrize("kwargs, match", [({"steps": 0}, "steps"), ({"lr": -1.0}, "lr"),
                                           ({"grad_clip": 0.0}, "grad_clip"), ({"eval_every": 0}, "eval_every")])
def test_bad_arguments(kwargs, match):
    arguments = {"steps": 2, "batch_size": 2, "seq_len": 4, "lr": 1e-3} | kwargs
    with pytest.raises(ValueError, match=match):
        train.train_language_model(TinyLM(), bigram_tokens(), **arguments)


def test_model_returning_wrong_shape_is_reported():
    with pytest.raises(ValueError, match=r"logits of shape \(B, T, vocab\)"):
        train.train_language_model(nn.Sequential(nn.Embedding(VOCAB, 4), nn.Flatten()), bigram_tokens(), steps=1,
                                   batch_size=2, seq_len=4, lr=1e-3)


# ---------------------------------------------------------------------------------------------- classifiers


def classification_data(n: int = 64, seq_len: int = 6, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, seq_len), generator=generator)
    labels = (ids[:, 0] > VOCAB // 2).long()  # tokens 6..10 vs 1..5 at the first position
    ids[:, 1:] = torch.where(labels[:, None] == 1, 7, 2)  # and the rest of the sequence agrees
    lengths = torch.randint(2, seq_len + 1, (n,), generator=generator)
    padding_mask = torch.arange(seq_len)[None, :] >= lengths[:, None]
    ids = ids.masked_fill(padding_mask, 0)
    return ids, labels, padding_mask


def test_classifier_learns_and_records_accuracy():
    torch.manual_seed(0)
    model = TinyClassifier()
    ids, labels, mask = classification_data()
    val_ids, val_labels, val_mask = classification_data(seed=1)
    history = train.train_classifier(model, ids, labels, padding_mask=mask, steps=40, batch_size=16, lr=5e-2,
                                     val_ids=val_ids, val_labels=val_labels, val_padding_mask=val_mask, eval_every=20)
    assert sorted(history.val_accuracy) == [20, 40]
    assert history.val_accuracy[40] >= 0.95
    assert history.final_loss < history.loss[0]
    metrics = train.evaluate_classifier(model, val_ids, val_labels, val_mask, batch_size=7)
    assert metrics["accuracy"] == pytest.approx(history.val_accuracy[40])
    assert metrics["loss"] == pytest.approx(history.val_loss[40])


def test_classifier_argument_checks():
    ids, labels, mask = classification_data()
    with pytest.raises(ValueError, match="labels must have shape"):
        train.train_classifier(TinyClassifier(), ids, labels[:3], steps=1, batch_size=2, lr=1e-3)
    with pytest.raises(ValueError, match="padding_mask"):
        train.train_classifier(TinyClassifier(), ids, labels, padding_mask=mask[:, :2], steps=1, batch_size=2, lr=1e-3)
    with pytest.raises(ValueError, match="val_ids and val_labels"):
        train.train_classifier(TinyClassifier(), ids, labels, val_ids=ids, steps=1, batch_size=2, lr=1e-3)


# ---------------------------------------------------------------------------------------------- history and checkpoints


def test_history_round_trips_through_dict_and_json():
    history = History([1, 2], [2.0, 1.0], [10.0, 11.0], [0.1, 0.2], {2: 1.5}, {2: 0.5})
    assert History.from_dict(history.to_dict()) == history
    assert History.from_dict(json.loads(json.dumps(history.to_dict()))) == history


def test_checkpoint_round_trip_is_atomic(tmp_path):
    model = TinyLM()
    path = save_checkpoint(tmp_path / "sub" / "model.pt", model, {"note": "hi", "history": {"step": [1]}})
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left behind
    checkpoint = load_checkpoint(path)
    assert checkpoint["extra"] == {"note": "hi", "history": {"step": [1]}}
    for name, tensor in model.state_dict().items():
        assert torch.equal(checkpoint["state_dict"][name], tensor)


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "model.pt", TinyLM(), {"version": 1})

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, TinyLM(), {"version": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["extra"] == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_load_checkpoint_rejects_other_files(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a labkit checkpoint"):
        load_checkpoint(tmp_path / "list.pt")


# ---------------------------------------------------------------------------------------------- cached_train


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model: nn.Module) -> History:
        self.calls += 1
        return train.train_language_model(model, bigram_tokens(), steps=5, batch_size=4, seq_len=8, lr=1e-2)


def build() -> nn.Module:
    return TinyLM()


KEY = {"name": "tiny lm", "config": {"vocab": VOCAB, "d_model": 16}, "data": "bigram", "profile": "smoke"}


def checkpoints(cache) -> list:
    return sorted(p.name for p in (cache / "checkpoints").iterdir())


def test_cached_train_trains_once_then_loads(tmp_path):
    trainer = Counter()
    model, history, loaded = cached_train(KEY, build, trainer, cache_dir=tmp_path)
    assert not loaded and trainer.calls == 1 and len(history.loss) == 5
    again, history_again, loaded_again = cached_train(KEY, build, trainer, cache_dir=tmp_path)
    assert loaded_again and trainer.calls == 1
    assert history_again == history
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor)
    assert not again.training
    names = checkpoints(tmp_path)
    assert len(names) == 1 and names[0].startswith("tiny-lm-") and names[0].endswith(".pt")


def test_cached_train_key_decides_the_checkpoint(tmp_path, monkeypatch):
    trainer = Counter()
    cached_train(KEY, build, trainer, cache_dir=tmp_path)
    cached_train(KEY | {"profile": "cpu"}, build, trainer, cache_dir=tmp_path)
    assert trainer.calls == 2 and len(checkpoints(tmp_path)) == 2
    assert train.cache_key(dict(reversed(list(KEY.items())))) == train.cache_key(KEY)  # order does not matter
    before = train.cache_key(KEY)
    monkeypatch.setattr(labkit, "__version__", "999")
    assert train.cache_key(KEY) != before  # a new labkit version retrains
    with pytest.raises(TypeError, match="JSON"):
        train.cache_key({"model": TinyLM()})


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_checkpoint_retrains_with_a_warning(tmp_path, damage):
    trainer = Counter()
    cached_train(KEY, build, trainer, cache_dir=tmp_path)
    (path,) = (tmp_path / "checkpoints").iterdir()
    content = path.read_bytes()
    path.write_bytes({"garbage": b"not a checkpoint at all", "truncated": content[: len(content) // 2],
                      "empty": b""}[damage])
    with pytest.warns(RuntimeWarning, match="training again"):
        _, _, loaded = cached_train(KEY, build, trainer, cache_dir=tmp_path)
    assert not loaded and trainer.calls == 2
    _, _, loaded = cached_train(KEY, build, trainer, cache_dir=tmp_path)  # repaired
    assert loaded and trainer.calls == 2
    assert len(checkpoints(tmp_path)) == 1


def test_checkpoint_that_does_not_fit_the_model_retrains(tmp_path):
    trainer = Counter()
    cached_train(KEY, build, trainer, cache_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="training again"):
        model, _, loaded = cached_train(KEY, lambda: TinyLM(d_model=8), trainer, cache_dir=tmp_path)
    assert not loaded and model.embed.embedding_dim == 8


def test_cached_train_uses_the_labkit_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    _, _, loaded = cached_train(KEY, build, Counter())
    assert not loaded and len(checkpoints(tmp_path)) == 1


def test_cached_train_checks_what_train_returns(tmp_path):
    with pytest.raises(TypeError, match="History"):
        cached_train(KEY, build, lambda model: None, cache_dir=tmp_path)

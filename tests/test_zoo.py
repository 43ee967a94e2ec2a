"""labkit.zoo: the book's model, trained once and loaded afterwards."""

from __future__ import annotations

import pytest
import torch

from labkit import zoo
from labkit.config import get_profile
from labkit.transformer import GPT, count_parameters


@pytest.fixture()
def smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("LABKIT_PROGRESS", "0")
    return get_profile("smoke").replace(max_docs=120, vocab_size=280, train_steps=6, eval_every=3, eval_batches=1)


def test_lm_data_splits_by_document_and_tokenizes(smoke):
    lm = zoo.lm_data(smoke)
    assert len(lm.train_docs) + len(lm.val_docs) == smoke.max_docs
    assert not {d.text for d in lm.train_docs} & {d.text for d in lm.val_docs}
    assert lm.train_tokens.dtype == torch.long and lm.train_tokens.dim() == 1
    assert int(lm.train_tokens.max()) < lm.tokenizer.vocab_size <= smoke.vocab_size
    assert lm.key["n_train_tokens"] == len(lm.train_tokens)
    again = zoo.lm_data(smoke)
    assert torch.equal(again.train_tokens, lm.train_tokens), "the same profile gives the same tokens"


def test_gpt_config_and_settings_follow_the_profile(smoke):
    config = zoo.gpt_config(smoke, vocab_size=300)
    assert (config.d_model, config.n_layers, config.max_len) == (smoke.d_model, smoke.n_layers, smoke.seq_len)
    assert zoo.train_settings(smoke, steps=3)["steps"] == 3
    with pytest.raises(TypeError, match="unknown training setting"):
        zoo.train_settings(smoke, step=3)


def test_train_then_load_gives_the_same_model(smoke):
    lm = zoo.lm_data(smoke)
    config = zoo.gpt_config(smoke, vocab_size=lm.tokenizer.vocab_size)
    settings = zoo.train_settings(smoke)
    model, history, loaded = zoo.train_or_load_gpt(lm, config, settings, profile=smoke, progress=False)
    assert not loaded and len(history.step) == smoke.train_steps
    assert history.loss[-1] < history.loss[0]
    again, history_again, loaded_again = zoo.train_or_load_gpt(lm, config, settings, profile=smoke, progress=False)
    assert loaded_again and history_again.loss == history.loss
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    other, _, loaded_other = zoo.train_or_load_gpt(lm, config, dict(settings, steps=2), profile=smoke, progress=False)
    assert not loaded_other, "other settings are another checkpoint"


def test_customise_changes_the_built_model(smoke):
    lm = zoo.lm_data(smoke)
    config = zoo.gpt_config(smoke, vocab_size=lm.tokenizer.vocab_size)

    def drop_last_layer(model: GPT) -> GPT:
        model.blocks.layers = model.blocks.layers[:0]
        return model

    model, _, _ = zoo.train_or_load_gpt(lm, config, zoo.train_settings(smoke, steps=2), name="no-layers",
                                        profile=smoke, customise=drop_last_layer, progress=False)
    assert count_parameters(model) < count_parameters(GPT(config))


def test_book_gpt_is_the_chapter_one_model(smoke):
    model, history, lm = zoo.book_gpt(smoke, progress=False)
    assert isinstance(model, GPT) and not model.training
    assert history.final_val_loss is not None
    logits = model(lm.val_tokens[: smoke.seq_len][None])
    assert logits.shape == (1, smoke.seq_len, lm.tokenizer.vocab_size)


def test_classifier_data_splits_documents_and_shares_labels(smoke):
    task = zoo.classifier_data(smoke.replace(max_docs=300))
    assert task.n_classes == smoke.get("cls_classes") == len(task.label_names)
    seq_len = smoke.get("cls_seq_len")
    assert task.train_ids.shape[1] == task.val_ids.shape[1] == seq_len
    assert task.train_padding.shape == task.train_ids.shape and task.train_padding.dtype == torch.bool
    assert int(task.train_labels.max()) < task.n_classes and int(task.val_labels.max()) < task.n_classes
    train_rows = {tuple(row.tolist()) for row in task.train_ids}
    assert not train_rows & {tuple(row.tolist()) for row in task.val_ids}, "no window on both sides"
    majority = torch.bincount(task.train_labels, minlength=task.n_classes).argmax()
    assert task.majority_accuracy == pytest.approx(float((task.val_labels == majority).float().mean()))


def test_book_classifier_trains_then_loads(smoke):
    profile = smoke.replace(max_docs=300)
    model, history, task = zoo.book_classifier(profile, progress=False)
    assert not model.training and history.val_accuracy, "validation accuracy is recorded"
    assert model(task.val_ids[:3], padding_mask=task.val_padding[:3]).shape == (3, task.n_classes)
    again, history_again, _ = zoo.book_classifier(profile, progress=False)
    assert history_again.loss == history.loss
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(TypeError, match="unknown training setting"):
        zoo.classifier_settings(profile, step=3)

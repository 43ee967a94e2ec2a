"""labkit.sharing: shared parameters are stored once, counted once, and compute what they should."""

from __future__ import annotations

import copy

import pytest
import torch

from labkit import sharing
from labkit.transformer import GPT, EncoderClassifier, TransformerConfig, count_parameters, gpt_parameter_count


def _config(**overrides):
    fields = dict(vocab_size=40, d_model=16, n_heads=2, n_layers=4, d_ff=32, max_len=12, n_classes=3)
    fields.update(overrides)
    return TransformerConfig(**fields)


def test_share_all_layers_counts_them_once_and_applies_one_layer_repeatedly():
    torch.manual_seed(0)
    model = EncoderClassifier(_config()).eval()
    dense = count_parameters(model)
    layer_params = count_parameters(model.encoder.layers[0])
    sharing.share_layers(model, n_unique=1)
    assert count_parameters(model) == dense - 3 * layer_params
    counts = sharing.parameter_counts(model)
    assert counts["unique"] == count_parameters(model) and counts["saved"] == 3 * layer_params
    assert all(layer is model.encoder.layers[0] for layer in model.encoder.layers)
    ids = torch.randint(0, 40, (2, 9))
    x = model.embed(ids)
    for _ in range(4):
        x = model.encoder.layers[0](x)
    pooled = model.encoder.norm(x).mean(dim=1)
    torch.testing.assert_close(model(ids), model.head(pooled))


def test_share_in_groups():
    model = EncoderClassifier(_config())
    sharing.share_layers(model, n_unique=2)
    layers = model.encoder.layers
    assert layers[0] is layers[1] and layers[2] is layers[3] and layers[1] is not layers[2]
    assert len(sharing.shared_groups(model)) == 2 * len(list(layers[0].parameters()))


def test_shared_layers_train_as_one():
    torch.manual_seed(0)
    model = sharing.share_layers(EncoderClassifier(_config()), 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = copy.deepcopy(model.encoder.layers[0].ffn.up.weight.detach())
    torch.nn.functional.cross_entropy(model(torch.randint(0, 40, (4, 8))), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    assert not torch.equal(model.encoder.layers[3].ffn.up.weight, before)
    assert model.encoder.layers[3].ffn.up.weight is model.encoder.layers[0].ffn.up.weight


def test_tie_and_untie_output_embedding():
    config = _config(n_classes=None, tie_embeddings=False)
    model = GPT(config)
    untied = count_parameters(model)
    assert untied == gpt_parameter_count(config)
    sharing.tie_output_embedding(model)
    assert model.lm_head.weight is model.embed.tokens.weight
    assert count_parameters(model) == untied - 40 * 16 == gpt_parameter_count(_config(n_classes=None))
    sharing.untie_output_embedding(model)
    assert count_parameters(model) == untied and model.lm_head.weight is not model.embed.tokens.weight


def test_bad_inputs():
    with pytest.raises(ValueError, match="positive int"):
        sharing.share_layers(EncoderClassifier(_config()), 0)
    with pytest.raises(ValueError, match="cannot exceed"):
        sharing.share_layers(EncoderClassifier(_config()), 5)
    with pytest.raises(ValueError, match="no 'layers'"):
        sharing.share_layers(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="same shape"):
        sharing.tie_output_embedding(EncoderClassifier(_config()), output="head")
    with pytest.raises(TypeError, match="nn.Module"):
        sharing.parameter_counts("model")

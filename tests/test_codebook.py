"""Codebook learning options (VQShapeConfig codebook_init, code_lookup, codebook_update, codebook_projection,
rotation_trick, dead_code_threshold): each on the tiny config, their buffers through save/load, the original
behaviour of configs without them, and identical codebooks on every rank of a two-process run."""

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from modeling_vqshape import VQShapeConfig, VQShapeForPreTraining, VQShapeModel
from modeling_vqshape.configuration_vqshape import DIVERSE_CODEBOOK, ORIGINAL_CODEBOOK
from modeling_vqshape.modeling_vqshape import kmeans, rotation_trick, straight_through

from .conftest import REPO_ROOT, TINY, TWO_CPU_RANKS, run_script

# no patch masking, no dropout: a training forward sees the code vectors that `code_vectors` computes
DETERMINISTIC = dict(TINY, mask_ratio=0.0, dropout=0.0)


def batch(seed=0, size=16):
    """Random walks, (size, 64): varied enough that the tokens' code vectors differ."""
    return torch.randn(size, 64, generator=torch.Generator().manual_seed(seed)).cumsum(-1)


def code_vectors(model, past_values):
    """The code vectors the codebook receives for `past_values`, `(num_vectors, code_dim)`, as looked up."""
    vqshape = model.vqshape
    scaled = (past_values - past_values.mean(-1, keepdim=True)) / (past_values.var(-1, keepdim=True) + 1e-5).sqrt()
    hidden = vqshape.tokenizer(vqshape.patch_encoder(vqshape.patch_encoder.embed(scaled)))
    z_e = vqshape.attribute_decoder(hidden)[0].reshape(-1, vqshape.config.code_dim)
    return F.normalize(z_e, dim=-1) if vqshape.codebook.cosine else z_e


def test_kmeans_finds_separated_clusters():
    torch.manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    vectors = torch.cat([centre + 0.1 * torch.randn(50, 2) for centre in centres])
    found, counts = kmeans(vectors, 3, iterations=10)
    # every true centre has one found centre next to it, holding its 50 vectors
    distances = torch.cdist(centres, found)
    assert (distances.min(dim=1).values < 0.1).all()
    assert sorted(counts.tolist()) == [50.0, 50.0, 50.0]
    spherical, _ = kmeans(vectors, 3, iterations=10, spherical=True)
    torch.testing.assert_close(spherical.norm(dim=-1), torch.ones(3))


def test_kmeans_initialisation_fills_the_codebook_from_data_once():
    torch.manual_seed(0)
    config = VQShapeConfig(**DETERMINISTIC, codebook_init="kmeans", kmeans_iterations=50)
    model = VQShapeForPreTraining(config).train()
    codebook = model.vqshape.codebook
    assert not codebook.initialized
    uniform = codebook.weight.detach().clone()
    assert uniform.abs().max() <= 1 / TINY["num_codes"]
    past_values = batch()
    with torch.no_grad():
        vectors = code_vectors(model.eval(), past_values)
    model.train()
    model(past_values)  # the first training forward clusters this batch's code vectors
    assert codebook.initialized
    entries = codebook.weight.detach()
    # each entry is the centre of some of the batch's code vectors: inside their range and far from the old table
    assert (entries.min(0).values >= vectors.min(0).values - 1e-5).all()
    assert (entries.max(0).values <= vectors.max(0).values + 1e-5).all()
    # converged k-means: every entry is the mean of the vectors nearest to it, and most entries have some
    assignment = torch.cdist(vectors, entries).argmin(1)
    assert assignment.unique().numel() > TINY["num_codes"] // 2
    for code in assignment.unique():
        torch.testing.assert_close(entries[code], vectors[assignment == code].mean(0), rtol=0, atol=1e-5)
    model(batch(seed=1))
    torch.testing.assert_close(codebook.weight.detach(), entries, rtol=0, atol=0)  # not clustered again
    # evaluation never initialises
    fresh = VQShapeForPreTraining(VQShapeConfig(**TINY, codebook_init="kmeans")).eval()
    fresh(past_values)
    assert not fresh.vqshape.codebook.initialized


def test_dead_code_is_reseeded_from_the_batch():
    torch.manual_seed(0)
    config = VQShapeConfig(**DETERMINISTIC, dead_code_threshold=0.5)
    model = VQShapeForPreTraining(config).train()
    codebook = model.vqshape.codebook
    torch.testing.assert_close(codebook.usage, torch.full((8,), 1 / 8))
    with torch.no_grad():
        codebook.usage.fill_(1 / 8)
        codebook.usage[3] = 0.01  # below 0.5 / 8: dead
    before = codebook.weight.detach().clone()
    past_values = batch()
    with torch.no_grad():
        vectors = code_vectors(model.eval(), past_values)
    model.train()
    out = model(past_values)
    assert int(codebook.reseeded_codes) == 1
    # code 3 is now one of the batch's code vectors; the others kept their entries
    assert torch.cdist(codebook.weight.detach()[3:4], vectors).min() < 1e-5
    kept = [code for code in range(8) if code != 3]
    torch.testing.assert_close(codebook.weight.detach()[kept], before[kept], rtol=0, atol=0)
    # the usage average moved towards this batch's counts (the fresh code started at the uniform share)
    counts = torch.bincount(out.code_indices.flatten(), minlength=8).float()
    expected = torch.full((8,), 1 / 8).lerp(counts / counts.sum(), 1 - config.usage_ema_decay)
    torch.testing.assert_close(codebook.usage, expected)
    out.loss.backward()  # the re-seeded table is the one the graph used


def test_ema_update_moves_entries_to_their_vectors_and_needs_no_gradient():
    torch.manual_seed(0)
    config = VQShapeConfig(**DETERMINISTIC, codebook_init="kmeans", codebook_update="ema",
                           codebook_ema_decay=0.5)
    model = VQShapeForPreTraining(config).train()
    codebook = model.vqshape.codebook
    assert not codebook.weight.requires_grad
    model(batch()).loss.backward()  # initialises, then one EMA step
    assert codebook.weight.grad is None
    past_values = batch(seed=1)  # other series: the entries move towards their means
    with torch.no_grad():
        vectors = code_vectors(model.eval(), past_values)
    model.train()
    entries = codebook.weight.detach().clone()
    counts, sums = codebook.ema_counts.clone(), codebook.ema_sums.clone()
    out = model(past_values)
    indices = out.code_indices.flatten()
    new_counts = counts.lerp(torch.bincount(indices, minlength=8).float(), 0.5)
    new_sums = sums.lerp(F.one_hot(indices, 8).float().t() @ vectors, 0.5)
    torch.testing.assert_close(codebook.ema_counts, new_counts)
    total = new_counts.sum()
    smoothed = (new_counts + 1e-5) / (total + 8e-5) * total
    torch.testing.assert_close(codebook.weight.detach(), new_sums / smoothed[:, None], rtol=1e-4, atol=1e-5)
    assert not torch.equal(codebook.weight.detach(), entries)


def test_cosine_lookup_quantises_to_unit_codes():
    model = VQShapeModel(VQShapeConfig(**TINY, code_lookup="cosine")).eval()
    out = model(batch())
    torch.testing.assert_close(out.codes.norm(dim=-1), torch.ones(16, 1, 4))
    entries = F.normalize(model.codebook.weight, dim=-1)
    torch.testing.assert_close(model.codebook.codes, entries)
    torch.testing.assert_close(out.codes, entries[out.code_indices], rtol=0, atol=1e-6)
    # the nearest entry is the one of largest cosine similarity with the (normalised) code vector
    tokens = model.tokenize(model.patch_encoder.embed(torch.randn(3, 64)))
    torch.testing.assert_close(tokens.z_e.norm(dim=-1), torch.ones(3, 4))
    similarity = tokens.z_e.reshape(-1, 4) @ entries.t()
    assert torch.equal(similarity.argmax(-1), tokens.code_indices.reshape(-1))


def test_rotation_trick_keeps_values_and_rotates_gradients():
    torch.manual_seed(0)
    z_e = torch.randn(5, 4, requires_grad=True)
    nearest = torch.randn(5, 4)
    rotated = rotation_trick(z_e, nearest)
    torch.testing.assert_close(rotated, nearest)
    upstream = torch.randn(5, 4)
    (grad,) = torch.autograd.grad((rotated * upstream).sum(), z_e)
    copied = torch.autograd.grad((straight_through(z_e, nearest) * upstream).sum(), z_e)[0]
    torch.testing.assert_close(copied, upstream)
    # the gradient is the upstream one through the transposed rotation, rescaled by |q| / |e|
    for row in range(5):
        e, q = z_e[row].detach(), nearest[row]
        e_hat, q_hat = e / e.norm(), q / q.norm()
        r = (e_hat + q_hat) / (e_hat + q_hat).norm()
        rotation = torch.eye(4) - 2 * torch.outer(r, r) + 2 * torch.outer(q_hat, e_hat)
        torch.testing.assert_close(rotation @ e_hat, q_hat)
        torch.testing.assert_close(grad[row], q.norm() / e.norm() * rotation.t() @ upstream[row])
    # in the model: same outputs as straight-through, different gradients
    torch.manual_seed(0)
    plain = VQShapeForPreTraining(VQShapeConfig(**TINY))
    rotating = VQShapeForPreTraining(VQShapeConfig(**TINY, rotation_trick=True))
    rotating.load_state_dict(plain.state_dict())
    losses = []
    for model in (plain, rotating):
        torch.manual_seed(1)
        loss = model.train()(batch()).loss
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1])
    first = plain.vqshape.attribute_decoder.code_head[0].weight.grad
    assert not torch.allclose(first, rotating.vqshape.attribute_decoder.code_head[0].weight.grad)


def test_simvq_projection_trains_the_map_not_the_entries():
    model = VQShapeForPreTraining(VQShapeConfig(**TINY, codebook_projection=True)).train()
    codebook = model.vqshape.codebook
    assert not codebook.weight.requires_grad and codebook.projection.weight.requires_grad
    torch.testing.assert_close(codebook.codes, codebook.weight @ codebook.projection.weight.t())
    out = model(batch())
    out.loss.backward()
    assert codebook.weight.grad is None and codebook.projection.weight.grad.abs().sum() > 0
    torch.testing.assert_close(out.token_features[..., :4].reshape(-1, 4),
                               codebook.codes[out.code_indices.flatten()].detach())


def test_option_statistics_survive_save_and_load(tmp_path):
    torch.manual_seed(0)
    config = VQShapeConfig(**TINY, **DIVERSE_CODEBOOK, codebook_update="ema")
    model = VQShapeForPreTraining(config).train()
    for seed in range(3):
        model(batch(seed))
    codebook = model.vqshape.codebook
    with torch.no_grad():
        codebook.usage[0] = 0.0  # dead: re-seeded at the next training step
    model(batch(3))
    assert int(codebook.reseeded_codes) >= 1
    model.save_pretrained(tmp_path)
    reloaded = VQShapeForPreTraining.from_pretrained(tmp_path)
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(dict(reloaded.named_buffers())[name], buffer, rtol=0, atol=0, msg=name)
    assert reloaded.vqshape.codebook.initialized  # continued pre-training does not cluster again
    torch.testing.assert_close(reloaded.vqshape.codebook.weight, codebook.weight, rtol=0, atol=0)
    reloaded.eval(), model.eval()
    torch.testing.assert_close(reloaded(batch(4)).loss, model(batch(4)).loss, rtol=0, atol=0)


def test_a_folder_saved_before_the_options_loads_with_the_original_behaviour(tmp_path):
    torch.manual_seed(0)
    model = VQShapeForPreTraining(VQShapeConfig(**TINY))
    model.save_pretrained(tmp_path)
    # the config.json of a model saved before the options existed: none of their keys
    config_path = tmp_path / "config.json"
    saved = json.loads(config_path.read_text())
    new_keys = {*ORIGINAL_CODEBOOK, "kmeans_iterations", "codebook_ema_decay", "usage_ema_decay"}
    assert new_keys <= set(saved)
    config_path.write_text(json.dumps({key: value for key, value in saved.items() if key not in new_keys}))
    reloaded = VQShapeForPreTraining.from_pretrained(tmp_path)
    for key, value in ORIGINAL_CODEBOOK.items():
        assert getattr(reloaded.config, key) == value
    assert list(reloaded.named_buffers()) == []
    assert list(reloaded.state_dict()) == list(model.state_dict())
    assert reloaded.vqshape.codebook.codes is reloaded.vqshape.codebook.weight
    # bit for bit, in evaluation and in a training step (same patch masks)
    for mode in ("eval", "train"):
        outputs = []
        for candidate in (model, reloaded):
            getattr(candidate, mode)()
            torch.manual_seed(1)
            outputs.append(candidate(batch()))
        for name in ("loss", "reconstruction", "shapes", "code_indices", "token_features"):
            torch.testing.assert_close(getattr(outputs[1], name), getattr(outputs[0], name), rtol=0, atol=0)


def test_options_are_validated():
    with pytest.raises(ValueError, match="code_lookup"):
        VQShapeConfig(**TINY, code_lookup="manhattan")
    with pytest.raises(ValueError, match="codebook_projection"):
        VQShapeConfig(**TINY, codebook_projection=True, codebook_update="ema")
    with pytest.raises(ValueError, match="dead_code_threshold"):
        VQShapeConfig(**TINY, dead_code_threshold=-0.1)
    with pytest.raises(ValueError, match="usage_ema_decay"):
        VQShapeConfig(**TINY, usage_ema_decay=1.0)


@pytest.mark.slow
def test_two_ranks_keep_one_codebook(tmp_path):
    pytest.importorskip("accelerate")
    output = tmp_path / "codebooks.json"
    run_script([sys.executable, *TWO_CPU_RANKS, str(REPO_ROOT / "tests" / "two_rank_codebook.py"), str(output)])
    result = json.loads(output.read_text())
    # each rank saw different series, yet after k-means and after re-seeding every rank holds rank 0's table
    assert result["reseeded"] >= 1
    for stage in ("after_init", "after_reseed", "after_training"):
        assert result[stage]["equal"], stage
    assert result["after_init"]["changed"]  # the table really moved from its uniform initialisation
    # the text model's usage counts hold both ranks' tokens (3 + 5 series), the same on each rank
    assert result["text_code_counts"] == {"equal": True, "total": (3 + 5) * TINY["num_tokens"]}

from __future__ import annotations

import pytest
import torch

from dhaka.model import PRESETS, VAE, resolve_structure


def test_presets_are_the_papers_structures():
    assert resolve_structure("deep") == (1024, 512, 256)
    assert resolve_structure("shallow") == (1024,)
    assert resolve_structure("64,16") == (64, 16)
    assert resolve_structure([32]) == (32,)
    with pytest.raises(ValueError, match="preset"):
        resolve_structure("wide")
    with pytest.raises(ValueError, match="positive"):
        resolve_structure([0])
    assert set(PRESETS) == {"deep", "shallow"}


@pytest.mark.parametrize("likelihood", ["gaussian", "mse", "bernoulli"])
def test_forward_shapes_and_loss_terms(likelihood):
    torch.manual_seed(0)
    m = VAE(20, hidden=(16, 8), latent_dim=3, likelihood=likelihood)
    x = torch.rand(10, 20)
    recon, mu, logvar = m(x)
    assert recon.shape == (10, 20) and mu.shape == (10, 3) and logvar.shape == (10, 3)
    out = m.loss(x, beta=0.5)
    assert torch.isclose(out.total, out.reconstruction + 0.5 * out.kl)
    assert out.kl.item() >= 0
    out.total.backward()
    assert m.encoder[0].weight.grad is not None


def test_kl_is_zero_at_the_prior():
    mu, logvar = torch.zeros(4, 3), torch.zeros(4, 3)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    assert torch.allclose(kl, torch.zeros(4))


def test_eval_mode_is_deterministic_and_uses_the_mean():
    m = VAE(5, hidden=(8,), latent_dim=2).eval()
    x = torch.randn(6, 5)
    a, mu, _ = m(x)
    b, _, _ = m(x)
    assert torch.equal(a, b)
    assert torch.allclose(a, m.decode(mu))


def test_input_affine_is_part_of_the_saved_state():
    m = VAE(4, hidden=(8,), latent_dim=2)
    m.set_input_affine(torch.tensor([1.0, 2, 3, 4]), torch.tensor([2.0, 2, 2, 2]))
    state = m.state_dict()
    assert torch.equal(state["center"], torch.tensor([1.0, 2, 3, 4]))
    assert torch.allclose(m.prepare(torch.tensor([[3.0, 2, 1, 0]])), torch.tensor([[1.0, 0, -1, -2]]))


def test_flops_count_matches_layer_sizes():
    m = VAE(100, hidden=(10,), latent_dim=2)
    # encoder 100*10 + mu/logvar 2*10*2, decoder 2*10 + 10*100; x2 (mul+add) x3 (fwd+bwd)
    assert m.flops_per_cell() == 6 * (1000 + 40 + 20 + 1000)

"""EMA of the parameters: closed-form update, buffers copied, state dict round trip."""

import torch

from ddpm_bench.models.ema import EMA


def test_one_update_is_the_weighted_average_and_buffers_are_copied():
    net = torch.nn.BatchNorm1d(3)  # has parameters and buffers
    ema = EMA(net, decay=0.9)
    old = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
        net.running_mean.fill_(7.0)
    ema.update(net)
    assert torch.allclose(ema.model.weight, 0.9 * old + 0.1 * net.weight, atol=1e-7)
    assert torch.equal(ema.model.running_mean, torch.full((3,), 7.0))
    assert not ema.model.weight.requires_grad


def test_state_dict_round_trip_loads_into_a_plain_model():
    net = torch.nn.Linear(4, 2)
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net.weight.mul_(3.0)
    ema.update(net)
    other = EMA(torch.nn.Linear(4, 2), decay=0.5)
    other.load_state_dict(ema.state_dict())
    plain = torch.nn.Linear(4, 2)
    plain.load_state_dict(ema.state_dict())
    assert torch.equal(other.model.weight, ema.model.weight)
    assert torch.equal(plain.weight, ema.model.weight)

"""icv/inject.py: the injection arithmetic every engine shares, against the float64 reference."""

from __future__ import annotations

import torch
from steering_reference import add as reference_add, rotate as reference_rotate

from icv import inject


def _x(rows: int = 3, tokens: int = 4, hidden: int = 16) -> torch.Tensor:
    return torch.randn(rows, tokens, hidden, generator=torch.Generator().manual_seed(0))


def test_rotate_matches_the_reference_and_keeps_the_norm():
    x, d = _x(), torch.randn(16, generator=torch.Generator().manual_seed(1)) * 0.3
    y = inject.rotate(x, d, inject.away_directions(d))
    torch.testing.assert_close(y, reference_rotate(x, d), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_dot_away_is_the_dot_product_per_position():
    x, d = _x(), torch.randn(16)
    away = inject.away_directions(d)
    expected = (x.double() * away.double()).sum(-1, keepdim=True).float()
    torch.testing.assert_close(inject.dot_away(x, away), expected)


def test_a_zero_delta_or_a_masked_position_leaves_x_bitwise_alone():
    x = _x()
    zero = torch.zeros(16)
    assert torch.equal(inject.rotate(x, zero, inject.away_directions(zero)), x)
    d = torch.randn(16)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 4, 1)
    rotated = inject.rotate(x, d, inject.away_directions(d), mask)
    assert torch.equal(rotated[:, 1::2], x[:, 1::2])
    assert not torch.equal(rotated[:, ::2], x[:, ::2])
    added = inject.add(x, d, mask)
    assert torch.equal(added[:, 1::2], x[:, 1::2])
    torch.testing.assert_close(added[:, ::2], reference_add(x[:, ::2], d))


def test_a_zero_activation_stays_zero():
    d = torch.randn(16)
    assert torch.equal(
        inject.rotate(torch.zeros(1, 1, 16), d, inject.away_directions(d)), torch.zeros(1, 1, 16)
    )


def test_per_row_deltas_broadcast_over_tokens():
    x, deltas = _x(), torch.randn(3, 1, 16) * 0.3
    y = inject.rotate(x, deltas, inject.away_directions(deltas))
    for row in range(3):
        torch.testing.assert_close(y[row], reference_rotate(x[row], deltas[row, 0]), atol=1e-5, rtol=1e-5)


def test_averaged_rotation_of_one_vector_is_the_plain_rotation():
    x, d = _x(), torch.randn(1, 16) * 0.3
    averaged = inject.rotate_averaged(x, d, inject.away_directions(d).transpose(0, 1))
    torch.testing.assert_close(averaged, inject.rotate(x, d[0], inject.away_directions(d[0])))

"""Micro-batch helpers of the batch-dependent norms (nfzoo.layers.ghost_batch)."""
import pytest
import torch

from nfzoo.layers.ghost_batch import lerp_sequence, split_micro_batches


def test_micro_batch_helpers():
    start, values = torch.randn(5), torch.randn(4, 5)
    state, expected = start.clone(), [start.clone()]
    for v in values:
        expected.append(state.lerp_(v, 0.1).clone())
    torch.testing.assert_close(lerp_sequence(start, values, 0.1), torch.stack(expected))
    for rows in (values, values[:1]):  # a buffer's weight, closed form and plain lerp
        torch.testing.assert_close(lerp_sequence(start, rows, torch.tensor([0.1])), torch.stack(expected[:len(rows) + 1]))
    assert split_micro_batches(torch.zeros(6, 2, 1, 1), 2).shape == (3, 2, 2, 1, 1)
    assert split_micro_batches(torch.zeros(6, 2, 1, 1), None).shape == (1, 6, 2, 1, 1)
    with pytest.raises(ValueError, match="multiple of micro_batch=4"):
        split_micro_batches(torch.zeros(6, 2, 1, 1), 4)

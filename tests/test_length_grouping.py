"""Length-grouped batches (train setting group_by_length) and the loop's batched host syncs (sync_every)."""

from __future__ import annotations

import pytest
import torch

from forgetlab.train import Loader, NonFiniteLossError, TrainConfig, train

LENGTHS = [2, 9, 3, 8, 2, 9, 3, 8]  # two of each length: batches of 2 sorted by length need no padding


def _examples(lengths):
    return [{"input_ids": [i + 1] * n, "labels": [i + 1] * n} for i, n in enumerate(lengths)]


def _ids(batch) -> list[int]:
    return (batch["input_ids"][:, 0] - 1).tolist()  # each row's example index


def _padding_share(loader, n_batches) -> float:
    it = iter(loader)
    masks = [next(it)["attention_mask"] for _ in range(n_batches)]
    return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)


def test_default_loader_order_is_the_plain_seeded_permutation():
    """group_by_length off: an epoch is exactly one randperm of the seed's generator, as before."""
    loader = Loader(_examples(LENGTHS), 3, 0, seed=5)
    it = iter(loader)
    got = sum((_ids(next(it)) for _ in range(3)), [])
    assert got == torch.randperm(8, generator=torch.Generator().manual_seed(5)).tolist()


@pytest.mark.parametrize("megabatch", [1, 2, 4])
def test_grouped_epoch_is_a_permutation_of_the_data(megabatch):
    loader = Loader(_examples(LENGTHS * 2 + [5]), 2, 0, seed=0, group_by_length=True, megabatch=megabatch)
    it = iter(loader)
    for _ in range(2):  # two epochs of 9 batches (17 examples: the short batch last)
        batches = [_ids(next(it)) for _ in range(9)]
        assert sorted(sum(batches, [])) == list(range(17))
        assert [len(b) for b in batches] == [2] * 8 + [1]


def test_grouping_removes_the_padding_of_the_worked_example():
    """One run of all 8 examples sorted longest first: 9 9 | 8 8 | 3 3 | 2 2, no padding at all;
    the plain shuffle of seed 0 pads."""
    grouped = Loader(_examples(LENGTHS), 2, 0, seed=0, group_by_length=True, megabatch=4)
    assert _padding_share(grouped, 4) == 0.0
    it = iter(grouped)
    assert sorted(tuple(sorted(LENGTHS[j] for j in _ids(next(it)))) for _ in range(4)) == [(2, 2), (3, 3), (8, 8), (9, 9)]
    plain = Loader(_examples(LENGTHS), 2, 0, seed=0)
    assert _padding_share(plain, 4) > 0.2


def test_each_batch_is_padded_to_its_own_longest_example():
    loader = Loader(_examples(LENGTHS), 2, 0, seed=0, group_by_length=True, megabatch=4)
    it = iter(loader)
    for _ in range(4):
        batch = next(it)
        assert batch["input_ids"].shape[1] == max(LENGTHS[j] for j in _ids(batch))


def test_grouped_batches_are_seeded():
    def first(seed):
        it = iter(Loader(_examples(LENGTHS * 4), 2, 0, seed=seed, group_by_length=True, megabatch=4))
        return [_ids(next(it)) for _ in range(32)]

    assert first(3) == first(3)
    assert first(3) != first(4)


def test_resuming_mid_epoch_gives_the_same_grouped_batches():
    make = lambda: Loader(_examples(LENGTHS), 2, 0, seed=1, group_by_length=True, megabatch=2)  # noqa: E731
    it = iter(make())
    for _ in range(3):  # 3 of the epoch's 4 batches
        next(it)
    state = it.state_dict()
    rest = [_ids(next(it)) for _ in range(6)]  # the epoch's last batch, then into the next epoch
    again = iter(make())
    again.load_state_dict(state)
    assert [_ids(next(again)) for _ in range(6)] == rest


# --- sync_every: the loop reads the loss and logs in runs of steps, with the same numbers

def _regression_run(sync_every, lr=0.05, nan_at=None, steps=6):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    cfg = TrainConfig(epochs=1, batch_size=2, lr=lr, grad_accum=2, sync_every=sync_every)
    g = torch.Generator().manual_seed(1)
    data = [{"x": torch.randn(2, 3, generator=g), "y": torch.randn(2, 1, generator=g)} for _ in range(2 * steps)]
    calls = iter(range(2 * steps))

    def loss_fn(m, b):
        loss = ((m(b["x"]) - b["y"]) ** 2).mean()
        if next(calls) == nan_at:
            loss = loss * float("nan")
        return loss, {"half": loss.detach() / 2, "constant": 1.5}

    rows = []
    train(model, loss_fn, iter(data), steps=steps, cfg=cfg, log=lambda s, row: rows.append((s, row)), desc="unit")
    return rows, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_batched_syncs_log_the_same_values_and_train_the_same_weights():
    rows1, w1 = _regression_run(sync_every=1)
    rows4, w4 = _regression_run(sync_every=4)  # flushes after steps 4 and 6
    assert torch.equal(w1, w4)
    assert rows1 == rows4
    assert [s for s, _ in rows4] == list(range(6))
    assert rows4[0][1]["constant"] == 1.5 and rows4[0][1]["half"] == pytest.approx(rows4[0][1]["loss"] / 2)


@pytest.mark.parametrize("sync_every", [1, 4])
def test_a_nan_loss_stops_naming_its_step_and_micro_batch(sync_every):
    """Micro-batch call 5 is step 2's second micro-batch; with sync_every 4 the job stops at the
    flush after step 3, and still names step 2."""
    with pytest.raises(NonFiniteLossError, match=r"unit: the loss is nan at step 2 \(micro-batch 1\)"):
        _regression_run(sync_every, nan_at=5)

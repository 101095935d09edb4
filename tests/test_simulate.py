"""evaluate_per_step: a test set simulated in batches scores exactly as one simulation of the whole set."""

import torch
from test_spikezip import CONFIGS, random_qann

from spiketwin.convert import to_snn
from spiketwin.simulate import evaluate_per_step, simulate


def test_batches_score_as_one_run():
    qann, x = random_qann(*CONFIGS[0], batch=11)
    snn = to_snn(qann)
    labels = torch.randint(0, 7, (11,), generator=torch.Generator().manual_seed(0))
    whole = simulate(snn, x)
    for batch_size in (4, 11):
        result = evaluate_per_step(snn, x, labels, batch_size=batch_size)
        assert torch.equal(result.accuracy, whole.accuracy_per_step(labels))
        assert torch.equal(result.settle_step, whole.settle_step)
        assert torch.equal(result.prediction, whole.output.argmax(-1))
    longer = evaluate_per_step(snn, x, labels, batch_size=4, steps=20).accuracy
    assert len(longer) == 20 and torch.equal(longer[len(whole.per_step):], longer[-1].expand(20 - len(whole.per_step)))

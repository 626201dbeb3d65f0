"""Fine-tuning with the unpruned model as teacher: the student ends closer to it than plain fine-tuning."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoprune.data import DataBundle, TensorSplit
from autoprune.graph import build_graph
from autoprune.policy import apply_policy
from autoprune.search_spaces import ChannelSpace
from autoprune.train import TrainConfig, distillation_loss, train

SHAPE = (1, 12, 12)


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    with torch.no_grad():
        net[-1].weight *= 20  # confident logits: a random net's are near uniform, with nothing to teach
    return net


def _data() -> DataBundle:
    g = torch.Generator().manual_seed(1)

    def split(n: int) -> TensorSplit:
        return TensorSplit(torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g))

    return DataBundle("noise", 10, 1, SHAPE[1:], split(512), split(128), split(128), augment=False)


def _kl_to(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(student.eval()(x), 1), F.log_softmax(teacher.eval()(x), 1),
                              log_target=True, reduction="batchmean"))


def test_distillation_loss_is_cross_entropy_at_weight_zero_and_zero_kl_on_the_teacher():
    logits, labels = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    assert torch.allclose(distillation_loss(logits, logits * 3, labels, temperature=4.0, weight=0.0),
                          F.cross_entropy(logits, labels))
    assert float(distillation_loss(logits, logits, labels, temperature=2.0, weight=1.0)) == pytest.approx(0.0, abs=1e-6)


def test_distilled_student_ends_closer_to_its_teacher_than_plain_finetuning():
    """Labels here are noise: whatever the student learns of the teacher comes through the KL term."""
    teacher, data = _net(), _data()
    graph = build_graph(teacher, SHAPE, model_id="tiny")
    space = ChannelSpace(graph)
    student = apply_policy(teacher, graph, space.kept(np.full(space.size, 0.5)))
    x = data.test.images
    start = _kl_to(teacher, student, x)
    plain, distilled = copy.deepcopy(student), copy.deepcopy(student)
    common = dict(epochs=3, lr=0.02, batch_size=32, schedule="cosine", seed=0)
    train(plain, data, TrainConfig(**common), torch.device("cpu"))
    train(distilled, data, TrainConfig(**common, teacher=copy.deepcopy(teacher), distill_weight=0.9),
          torch.device("cpu"))
    assert _kl_to(teacher, distilled, x) < 0.5 * _kl_to(teacher, plain, x)
    assert _kl_to(teacher, distilled, x) < start

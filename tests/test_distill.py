"""Knowledge distillation: the loss, the ``loss_fn`` hook of fit, frozen teacher copies and the recipe option."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deepshrink.core import ConfigError, set_mask
from deepshrink.data import load_dataset
from deepshrink.models import build_model
from deepshrink.recipes import RecipeContext, frozen_copy, parse_recipe, run_recipe
from deepshrink.share import WeightSharing, share_weights_
from deepshrink.train import DistillationLoss, TrainConfig, evaluate, fit


def _tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("lenet300", in_features=64, num_classes=10, hidden=[32, 16])


def test_distillation_loss_limits() -> None:
    teacher = _tiny()
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    logits = torch.randn(8, 10)
    assert torch.allclose(DistillationLoss(teacher, alpha=0.0)(logits, y, x), F.cross_entropy(logits, y))
    same = teacher(x).detach()
    assert float(DistillationLoss(teacher, alpha=1.0)(same, y, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(DistillationLoss(teacher, alpha=1.0)(logits, y, x)) > 0.01
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ConfigError, match="alpha"):
        DistillationLoss(teacher, alpha=1.5)
    with pytest.raises(ConfigError, match="temperature"):
        DistillationLoss(teacher, temperature=0)


def test_fit_uses_loss_fn_and_learns_from_teacher() -> None:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    teacher = _tiny(0)
    fit(teacher, train, TrainConfig(epochs=4, lr=0.1, batch_size=32), quiet=True)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    calls: list[int] = []
    distill = DistillationLoss(teacher, alpha=1.0, temperature=2.0)

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        calls.append(labels.numel())
        return distill(logits, labels, inputs)

    student = _tiny(1)
    fit(student, train, TrainConfig(epochs=4, lr=0.1, batch_size=32), quiet=True, loss_fn=loss_fn)
    assert sum(calls) == 4 * len(train)  # every batch went through the hook
    assert evaluate(student, test)["accuracy"] > 0.85  # labels unused (alpha 1): learnt from the teacher alone
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


def test_frozen_copy_of_a_compressed_model_is_plain_and_independent() -> None:
    model = _tiny()
    set_mask(model.fc1, model.fc1.weight.abs() > 0.05)
    share_weights_(model, WeightSharing(bits=3))
    x = torch.randn(5, 64)
    copy = frozen_copy(model)
    assert torch.equal(copy(x), model(x))
    assert not any(hasattr(m, "parametrizations") for m in copy.modules())
    share_weights_(model, WeightSharing(bits=2, bias_bits=1))  # new parametrizations (biases) on the original
    assert torch.isfinite(copy(x)).all() and not torch.equal(copy(x), model(x))


def test_recipe_distill_option_validates_and_runs() -> None:
    with pytest.raises(ConfigError, match="distill"):
        parse_recipe({"stages": [{"retrain": {"epochs": 1, "distill": {"alpah": 0.5}}}]})
    with pytest.raises(ConfigError, match="alpha"):
        parse_recipe({"stages": [{"finetune": {"distill": {"alpha": 2}}}]})
    model = _tiny()
    train = load_dataset("digits", "train")
    fit(model, train, TrainConfig(epochs=3, lr=0.1, batch_size=32), quiet=True)
    recipe = parse_recipe({"stages": [
        {"prune": {"sparsity": {"fc1": 0.8}, "rounds": 2, "retrain": {"epochs": 1},
                   "distill": {"alpha": 0.7, "temperature": 3}}},
        {"share": {"bits": 4}},
        {"finetune": {"epochs": 1, "lr": 1.0e-3, "distill": {}}},
    ]})
    context = RecipeContext(model=model, train_data=train, val_data=load_dataset("digits", "val"), quiet=True)
    dense = frozen_copy(model)
    records = run_recipe(recipe, context)
    assert context.teacher is not None and context.teacher is not model
    x = torch.randn(4, 64)
    assert torch.equal(context.teacher(x), dense(x))  # the teacher is the model as the recipe found it
    assert records[-1]["val_accuracy"] > 0.8


def test_feature_distillation_matches_named_modules_and_detaches() -> None:
    teacher = _tiny(0)
    student = _tiny(1)
    names = [n for n, m in student.named_modules() if isinstance(m, torch.nn.Linear)][:2]
    loss = DistillationLoss(teacher, alpha=1.0, features=names, feature_weight=1.0)
    x = torch.randn(8, 64)
    plain = DistillationLoss(teacher, alpha=1.0)(student(x), None, x).detach()
    with pytest.raises(RuntimeError, match="not attached"):
        loss(student(x), None, x)
    loss.attach(student)
    value = loss(student(x), None, x).detach()
    assert float(value) > float(plain) + 1e-3  # the feature term adds the hidden layers' mismatch
    loss.attach(teacher)  # a student identical to the teacher: features and logits agree
    assert float(loss(teacher(x), None, x)) == pytest.approx(0.0, abs=1e-6)
    loss.detach()
    assert not any(m._forward_hooks for m in student.modules())
    assert not any(m._forward_hooks for m in teacher.modules())
    with pytest.raises(ConfigError, match="not modules"):
        DistillationLoss(teacher, features=["nowhere"]).attach(student)


def test_fit_with_feature_distillation_learns_and_removes_its_hooks() -> None:
    teacher, student = _tiny(0), _tiny(1)
    x = torch.randn(64, 64)
    names = [n for n, m in student.named_modules() if isinstance(m, torch.nn.Linear)]
    loss = DistillationLoss(teacher, alpha=1.0, features=names[:-1])
    with torch.no_grad():
        before = float(F.mse_loss(student(x), teacher(x)))
    fit(student, torch.utils.data.TensorDataset(x), TrainConfig(epochs=20, lr=1e-2, optimizer="adam",
                                                                 batch_size=16), loss_fn=loss, quiet=True)
    with torch.no_grad():
        assert float(F.mse_loss(student(x), teacher(x))) < 0.5 * before
    assert not any(m._forward_hooks for m in student.modules())


def test_recipe_distill_features_are_checked() -> None:
    from deepshrink.train.stage import check_distill

    spec = check_distill({"distill": {"alpha": 1.0, "features": ["fc1"], "feature_weight": 0.5}})
    assert spec is not None and spec["features"] == ("fc1",) and spec["feature_weight"] == 0.5
    with pytest.raises(ConfigError, match="features"):
        check_distill({"distill": {"features": "fc1"}})
    with pytest.raises(ConfigError, match="feature_weight"):
        check_distill({"distill": {"feature_weight": -1}})

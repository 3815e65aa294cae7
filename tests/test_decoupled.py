"""cRT and LWS (Kang et al. 2020): the classifier of a trained run re-trained, or re-scaled per class, on its frozen
features; gradients against the published formulas, and what the run directory holds."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import lpt
from lpt.config import ConfigError, load_config
from lpt.methods import get_method
from lpt.run.files import read_run
from lpt.run.load import build_run_model
from tests.conftest import tiny_run_overrides

pytestmark = pytest.mark.usefixtures("one_thread")
CE = ["loss.name=ce", "loss.label_smoothing=0", "phase1.sampling=balanced", "model.feature_dropout=0"]


def decoupled(tiny_fmnist, init, method, *extra):
    return load_config("demo", tiny_run_overrides(tiny_fmnist) + [f"method={method}", f"init={init}",
                                                                   "phases=[phase1]", *CE, *extra])


@pytest.mark.parametrize("head,scale", [("linear", 1.0), ("cosine", 20.0)])
def test_lws_loss_and_gradient_equal_the_formula(tiny_fmnist, head, scale):
    cfg = decoupled(tiny_fmnist, "RUN", "lws", f"model.head={head}", f"loss.scale={scale}")
    model, _ = build_run_model(cfg, 10)
    with torch.no_grad():
        model.class_scale.copy_(torch.linspace(0.5, 1.5, 10))
    method = get_method("lws")(cfg, [40] * 10)
    assert method.prepare(model, "phase1") == [model.class_scale]  # nothing else trains
    feats, labels = torch.randn(6, 32), torch.tensor([0, 3, 3, 9, 5, 1])
    loss = method(model, {"balanced": (feats, labels)}, 1, 2)["loss"]
    loss.backward()
    z = model.head(feats).detach()  # the frozen classifier's logits
    p = F.softmax(scale * model.class_scale.detach() * z, dim=1)
    assert loss.item() == pytest.approx(F.cross_entropy(scale * model.class_scale.detach() * z, labels).item())
    # d/ds_c mean_i CE(scale * s * z_i, y_i) = mean_i scale * (p_ic - [y_i = c]) * z_ic
    expected = (scale * (p - F.one_hot(labels, 10)) * z).mean(0)
    assert torch.allclose(model.class_scale.grad, expected, atol=1e-6)
    assert all(p.grad is None for n, p in model.named_parameters() if n != "class_scale")


def test_crt_gradient_of_a_linear_classifier_equals_the_formula(tiny_fmnist):
    cfg = decoupled(tiny_fmnist, "RUN", "crt", "model.head=linear", "loss.scale=1")
    model, _ = build_run_model(cfg, 10)
    method = get_method("crt")(cfg, [40] * 10)
    assert method.prepare(model, "phase1") == list(model.head.parameters())
    feats, labels = torch.randn(5, 32), torch.tensor([2, 2, 7, 0, 4])
    method(model, {"balanced": (feats, labels)}, 1, 2)["loss"].backward()
    residual = (F.softmax(model.head(feats), 1) - F.one_hot(labels, 10)).detach() / 5  # (P - Y) / B
    assert torch.allclose(model.head.weight.grad, residual.t() @ feats, atol=1e-6)
    assert torch.allclose(model.head.bias.grad, residual.sum(0), atol=1e-6)
    assert model.shared_prompt.grad is None


@pytest.fixture(scope="module")
def lpt_run(tiny_fmnist, tmp_path_factory):
    """A two-phase LPT run (phase 2: its features come through the group prompts)."""
    out = tmp_path_factory.mktemp("init") / "lpt"
    lpt.train(load_config("demo", tiny_run_overrides(tiny_fmnist)), out)
    return out


def test_crt_retrains_only_the_classifier_of_the_init_run(tiny_fmnist, lpt_run, tmp_path):
    lpt.train(decoupled(tiny_fmnist, lpt_run, "crt", "phase1.epochs=2"), tmp_path / "crt")
    before, after = load_file(lpt_run / "model.safetensors"), load_file(tmp_path / "crt" / "model.safetensors")
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before if not k.startswith("head."))
    assert not torch.allclose(after["head.weight"], before["head.weight"])
    info = json.loads((tmp_path / "crt" / "run.json").read_text())
    assert info["phases"]["phase1"]["trainable_by_part"] == {"head": 10 * 32}
    assert read_run(tmp_path / "crt").trained_params == 10 * 32  # lpt compare: not the init run's prompts
    assert lpt.load_run(tmp_path / "crt").model.phase == 2  # evaluated as the run it started from: phase 2
    assert lpt.evaluate_run(tmp_path / "crt", device="cpu") == json.loads((tmp_path / "crt" / "metrics.json")
                                                                          .read_text())


def test_lws_run_predicts_the_init_runs_logits_times_its_class_scales(tiny_fmnist, lpt_run, tmp_path):
    lpt.train(decoupled(tiny_fmnist, lpt_run, "lws", "phase1.epochs=2", "phase1.lr=2"), tmp_path / "lws")
    lws, init = lpt.load_run(tmp_path / "lws"), lpt.load_run(lpt_run)
    scales = lws.model.class_scale.detach()
    assert not torch.allclose(scales, torch.ones(10))  # they trained
    x = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(lws.model(x), init.model(x) * scales, atol=1e-6)
    info = json.loads((tmp_path / "lws" / "run.json").read_text())
    assert info["phases"]["phase1"]["trainable_by_part"] == {"class_scale": 10}


def test_decoupled_methods_refuse_a_missing_init_or_another_model(tiny_fmnist, lpt_run, tmp_path):
    with pytest.raises(ConfigError, match="method 'crt' re-trains the classifier.*set init=RUN_DIR"):
        lpt.train(decoupled(tiny_fmnist, "", "crt"), tmp_path / "a")
    with pytest.raises(ConfigError, match="'model.pool_size' is 3, but the run init=.* has 4.*set model.pool_size=4"):
        lpt.train(decoupled(tiny_fmnist, lpt_run, "lws", "model.pool_size=3"), tmp_path / "b")
    assert not (tmp_path / "b").exists()
    for method in ("crt", "lws"):  # each starts the classifier itself: a head_init would go unused, silently
        with pytest.raises(ConfigError, match=f"'model.head_init' is 'class_mean', but method '{method}' starts"):
            lpt.train(decoupled(tiny_fmnist, lpt_run, method, "model.head_init=class_mean"), tmp_path / "c")
    assert not (tmp_path / "c").exists()

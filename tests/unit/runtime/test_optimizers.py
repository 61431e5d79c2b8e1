"""Optimizers built from a config match their reference: torch bit for bit, Lamb/Lion a
per-tensor implementation of the published (DeepSpeed kernel) algorithm written here."""

from __future__ import annotations

import copy
import math
from types import MappingProxyType, SimpleNamespace

import pytest
import torch

from zerospeed.errors import ConfigError
from zerospeed.ops.adagrad import DeepSpeedCPUAdagrad
from zerospeed.ops.adam import DeepSpeedCPUAdam, FusedAdam
from zerospeed.ops.lamb import FusedLamb
from zerospeed.ops.lion import DeepSpeedCPULion, FusedLion
from zerospeed.runtime.optimizers import build_optimizer, is_zero_supported_optimizer

SHAPES = [(6, 5), (5,), (3, 4, 2), (1,)]
STEPS = 5


def make_params(scale: float = 1.0, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen) * scale) for shape in SHAPES]


def clone(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def gradients(step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(shape, generator=gen) for shape in SHAPES]


def train(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], steps: int = STEPS) -> None:
    for step in range(steps):
        for p, g in zip(params, gradients(step)):
            p.grad = g.clone()
        optimizer.step()


def assert_bitwise(ours, reference) -> None:
    for a, b in zip(ours, reference):
        assert torch.equal(a, b), (a - b).abs().max()


def run_both(config: dict, reference_factory, steps: int = STEPS):
    ours_params, ref_params = make_params(), make_params()
    ours = build_optimizer(config, ours_params)
    train(ours, ours_params, steps)
    train(reference_factory(ref_params), ref_params, steps)
    return ours, ours_params, ref_params


# ---------------------------------------------------------------- Adam family vs torch


ADAM_PARAMS = {"lr": 0.01, "betas": [0.8, 0.99], "eps": 1e-7, "weight_decay": 0.1}
ADAM_TORCH_ARGS = dict(lr=0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.1)


def test_adam_defaults_to_decoupled_weight_decay_like_torch_adamw():
    ours, a, b = run_both({"type": "Adam", "params": ADAM_PARAMS},
                          lambda p: torch.optim.AdamW(p, fused=True, **ADAM_TORCH_ARGS))
    assert type(ours) is FusedAdam and ours.adam_w_mode == 1
    assert ours.defaults["fused"] is True  # torch's fused CPU kernel, the fast path
    assert_bitwise(a, b)


def test_adam_w_mode_false_is_torch_adam_with_l2():
    ours, a, b = run_both({"type": "adam", "params": {**ADAM_PARAMS, "adam_w_mode": False}},
                          lambda p: torch.optim.Adam(p, fused=True, **ADAM_TORCH_ARGS))
    assert ours.adam_w_mode == 0 and "adam_w_mode" not in ours.defaults
    assert_bitwise(a, b)


def test_adamw_is_always_decoupled():
    _, a, b = run_both({"type": "ADAMW", "params": {**ADAM_PARAMS, "adam_w_mode": False}},
                       lambda p: torch.optim.AdamW(p, fused=True, **ADAM_TORCH_ARGS))
    assert_bitwise(a, b)


def test_adam_foreach_from_config_matches_torch_foreach():
    ours, a, b = run_both({"type": "AdamW", "params": {**ADAM_PARAMS, "foreach": True}},
                          lambda p: torch.optim.AdamW(p, foreach=True, **ADAM_TORCH_ARGS))
    assert ours.defaults["foreach"] is True and not ours.defaults["fused"]
    assert_bitwise(a, b)


def test_torch_adam_key_gives_torch_classes():
    ours, a, b = run_both({"type": "Adam", "params": {**ADAM_PARAMS, "torch_adam": True, "adam_w_mode": False}},
                          lambda p: torch.optim.Adam(p, fused=True, **ADAM_TORCH_ARGS))
    assert type(ours) is torch.optim.Adam
    assert_bitwise(a, b)
    ours = build_optimizer({"type": "Adam", "params": {"torch_adam": True}}, make_params())
    assert type(ours) is torch.optim.AdamW


def test_cpu_offload_builds_deepspeed_cpu_adam():
    params, ref = make_params(), make_params()
    ours = build_optimizer({"type": "Adam", "params": {**ADAM_PARAMS, "fp32_optimizer_states": True}}, params,
                           cpu_offload=True)
    assert type(ours) is DeepSpeedCPUAdam and ours.fp32_optimizer_states is True
    train(ours, params)
    train(torch.optim.AdamW(ref, fused=True, **ADAM_TORCH_ARGS), ref)
    assert_bitwise(params, ref)


def test_deepspeed_signatures_positional():
    params, ref = make_params(), make_params()
    # FusedAdam(params, lr, bias_correction, betas, eps, adam_w_mode, weight_decay, amsgrad, set_grad_none)
    ours = FusedAdam(params, 0.01, True, (0.8, 0.99), 1e-7, False, 0.1, True, False)
    train(ours, params)
    train(torch.optim.Adam(ref, fused=True, amsgrad=True, **ADAM_TORCH_ARGS), ref)
    assert_bitwise(params, ref)
    ours.zero_grad()
    assert all(p.grad is not None and not p.grad.any() for p in params)  # set_grad_none=False
    # DeepSpeedCPUAdam(model_params, lr, bias_correction, betas, eps, weight_decay, amsgrad, adamw_mode)
    params, ref = make_params(), make_params()
    train(DeepSpeedCPUAdam(params, 0.01, True, (0.8, 0.99), 1e-7, 0.1, False, False), params)
    train(torch.optim.Adam(ref, fused=True, **ADAM_TORCH_ARGS), ref)
    assert_bitwise(params, ref)


def reference_adam_without_bias_correction(params, lr, betas, eps, weight_decay, decoupled, steps=STEPS, first=0):
    beta1, beta2 = betas
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    with torch.no_grad():
        for step in range(steps):
            for i, (p, g) in enumerate(zip(params, gradients(step)[first:])):
                if decoupled:
                    p.mul_(1 - lr * weight_decay)
                else:
                    g = g + weight_decay * p
                m[i] = beta1 * m[i] + (1 - beta1) * g
                v[i] = beta2 * v[i] + (1 - beta2) * g * g
                p -= lr * m[i] / (v[i].sqrt() + eps)


@pytest.mark.parametrize("decoupled", [True, False])
def test_adam_without_bias_correction(decoupled):
    params, ref = make_params(), make_params()
    config = {"type": "Adam", "params": {**ADAM_PARAMS, "bias_correction": False, "adam_w_mode": decoupled}}
    ours = build_optimizer(config, params)
    train(ours, params)
    reference_adam_without_bias_correction(ref, 0.01, (0.8, 0.99), 1e-7, 0.1, decoupled)
    for a, b in zip(params, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert ours.state[params[0]]["step"].item() == STEPS


def test_adam_mixed_bias_correction_groups():
    params, ref = make_params(), make_params()
    groups = [{"params": params[:2]}, {"params": params[2:], "bias_correction": False}]
    ours = build_optimizer({"type": "AdamW", "params": {**ADAM_PARAMS}}, groups)
    train(ours, params)
    reference = torch.optim.AdamW(ref[:2], fused=True, **ADAM_TORCH_ARGS)
    train(reference, ref[:2])
    assert_bitwise(params[:2], ref[:2])
    reference_adam_without_bias_correction(ref[2:], 0.01, (0.8, 0.99), 1e-7, 0.1, True, first=2)
    for a, b in zip(params[2:], ref[2:]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert ours.param_groups[0]["params"] == params[:2] and len(ours.param_groups) == 2


# ---------------------------------------------------------------- SGD, Adagrad vs torch


def test_sgd_matches_torch():
    config = {"type": "SGD", "params": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}}
    ours, a, b = run_both(config, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                                            weight_decay=0.01, fused=True))
    assert type(ours) is torch.optim.SGD
    assert_bitwise(a, b)


def test_adagrad_matches_torch_and_cpu_class():
    config = {"type": "Adagrad", "params": {"lr": 0.05, "eps": 1e-9, "weight_decay": 0.01}}
    ours, a, b = run_both(config, lambda p: torch.optim.Adagrad(p, lr=0.05, eps=1e-9, weight_decay=0.01, fused=True))
    assert type(ours) is torch.optim.Adagrad
    assert_bitwise(a, b)
    params = make_params()
    cpu = build_optimizer(config, params, cpu_offload=True)
    assert type(cpu) is DeepSpeedCPUAdagrad
    train(cpu, params)
    assert_bitwise(params, b)


# ---------------------------------------------------------------- Lamb vs per-tensor reference


def reference_lamb(params, lr, betas, eps, weight_decay, bias_correction=True, eps_inside_sqrt=False,
                   max_coeff=10.0, min_coeff=0.01, steps=STEPS):
    """DeepSpeed's FusedLamb kernel, one tensor at a time, in plain tensor arithmetic."""
    beta1, beta2 = betas
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    coeffs = []
    with torch.no_grad():
        for step in range(1, steps + 1):
            coeffs = []
            for i, (p, g) in enumerate(zip(params, gradients(step - 1))):
                m[i] = beta1 * m[i] + (1 - beta1) * g
                v[i] = beta2 * v[i] + (1 - beta2) * g * g
                denom = (v[i] + eps).sqrt() if eps_inside_sqrt else v[i].sqrt() + eps
                update = m[i] / denom + weight_decay * p
                w_norm, u_norm = p.norm().item(), update.norm().item()
                coeff = 1.0
                if w_norm != 0 and u_norm != 0:
                    coeff = min(max(w_norm / u_norm, min_coeff), max_coeff)
                coeffs.append(coeff)
                if bias_correction:
                    step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                else:
                    step_size = lr
                p -= step_size * coeff * update
    return coeffs


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"weight_decay": 0.01},
        {"weight_decay": 0.01, "bias_correction": False, "eps_inside_sqrt": True},
        {"max_coeff": 1.0, "min_coeff": 0.95},  # both clamps bite (unclamped ratios 0.94 .. 2.5)
    ],
    ids=["plain", "weight_decay", "no_bias_correction_eps_inside", "clamped"],
)
def test_lamb_matches_reference(options):
    params, ref = make_params(), make_params()
    kwargs = {"lr": 0.02, "betas": [0.85, 0.98], "eps": 1e-6, "weight_decay": 0.0, **options}
    ours = build_optimizer({"type": "Lamb", "params": kwargs}, params)
    assert type(ours) is FusedLamb
    train(ours, params)
    expected_coeffs = reference_lamb(ref, **{**kwargs, "betas": (0.85, 0.98)})
    for a, b in zip(params, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    for got, want in zip(ours.get_lamb_coeffs(), expected_coeffs):
        assert math.isclose(got, want, rel_tol=1e-5)
    if "max_coeff" in options:
        assert 1.0 in expected_coeffs and 0.95 in expected_coeffs


def test_lamb_trust_ratio_extremes():
    # huge weights -> ratio capped at max_coeff; tiny weights -> floored at min_coeff; zero -> 1
    params = [torch.nn.Parameter(torch.full((4,), 1e4)), torch.nn.Parameter(torch.full((4,), 1e-6)),
              torch.nn.Parameter(torch.zeros(4))]
    for p in params:
        p.grad = torch.ones(4)
    opt = FusedLamb(params, lr=0.1)
    opt.step()
    assert opt.get_lamb_coeffs() == [10.0, pytest.approx(0.01), 1.0]


def test_lamb_rejects_what_deepspeed_rejects():
    with pytest.raises(RuntimeError, match="AMSGrad"):
        FusedLamb(make_params(), amsgrad=True)
    with pytest.raises(ConfigError, match=r"optimizer\.params\.max_grad_norm = 1\.0.*gradient_clipping"):
        build_optimizer({"type": "Lamb", "params": {"max_grad_norm": 1.0}}, make_params())


# ---------------------------------------------------------------- Lion vs per-tensor reference


def reference_lion(params, lr, betas, weight_decay, steps=STEPS):
    beta1, beta2 = betas
    m = [torch.zeros_like(p) for p in params]
    with torch.no_grad():
        for step in range(steps):
            for i, (p, g) in enumerate(zip(params, gradients(step))):
                direction = torch.sign(beta1 * m[i] + (1 - beta1) * g)
                p.mul_(1 - lr * weight_decay)
                p -= lr * direction
                m[i] = beta2 * m[i] + (1 - beta2) * g


@pytest.mark.parametrize("cpu_offload", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_lion_matches_reference(weight_decay, cpu_offload):
    params, ref = make_params(), make_params()
    config = {"type": "Lion", "params": {"lr": 0.003, "betas": [0.9, 0.99], "weight_decay": weight_decay}}
    ours = build_optimizer(config, params, cpu_offload=cpu_offload)
    assert type(ours) is (DeepSpeedCPULion if cpu_offload else FusedLion)
    train(ours, params)
    reference_lion(ref, 0.003, (0.9, 0.99), weight_decay)
    for a, b in zip(params, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_lion_defaults_follow_deepspeed():
    opt = FusedLion(make_params())
    assert opt.defaults == {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.0}
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.zeros(3)
    FusedLion([param], lr=0.1).step()
    assert torch.equal(param, torch.ones(3))  # sign(0) = 0: no drift on zero gradient and momentum


# ---------------------------------------------------------------- state round trip, groups


@pytest.mark.parametrize("kind", ["Adam", "Lamb", "Lion", "Adagrad"])
def test_state_dict_round_trip_continues_identically(kind):
    params = make_params()
    opt = build_optimizer({"type": kind, "params": {"lr": 0.01}}, params)
    train(opt, params, steps=2)
    resumed_params = clone(params)
    resumed = build_optimizer({"type": kind, "params": {"lr": 0.01}}, resumed_params)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))  # as through torch.save / torch.load
    for step in range(2, 5):
        for p, q, g in zip(params, resumed_params, gradients(step)):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        resumed.step()
    assert_bitwise(params, resumed_params)


def test_param_groups_keep_their_own_settings():
    params = make_params()
    groups = [{"params": params[:2], "weight_decay": 0.0}, {"params": params[2:], "lr": 0.5}]
    opt = build_optimizer(SimpleNamespace(type="Lion", params={"lr": 0.01, "weight_decay": 0.1}), groups)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.5]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.1]


def test_read_only_config_params_are_not_mutated():
    # the config package hands params over as a frozen mapping; adam_w_mode etc. are popped from a copy
    params = MappingProxyType({"lr": 0.1, "adam_w_mode": False, "torch_adam": False, "betas": (0.9, 0.99)})
    opt = build_optimizer(SimpleNamespace(type="Adam", params=params), make_params())
    assert type(opt) is FusedAdam and opt.adam_w_mode == 0
    assert dict(params) == {"lr": 0.1, "adam_w_mode": False, "torch_adam": False, "betas": (0.9, 0.99)}


def test_generator_of_parameters_is_accepted():
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer({"type": "Adam", "params": {"lr": 0.1}}, model.parameters())
    assert len(opt.param_groups[0]["params"]) == 2 and opt.defaults["fused"] is True


# ---------------------------------------------------------------- errors and the ZeRO list


def test_unknown_type_names_value_and_allowed():
    with pytest.raises(ConfigError) as info:
        build_optimizer({"type": "Adamm", "params": {}}, make_params())
    message = str(info.value)
    assert "optimizer.type = 'Adamm'" in message and "did you mean 'Adam'" in message
    assert "allowed: Adam, AdamW, Adagrad, Lamb, Lion" in message and "SGD" in message
    with pytest.raises(ConfigError, match=r"optimizer\.type = 'OneBitAdam'.*does not support yet"):
        build_optimizer({"type": "OneBitAdam", "params": {}}, make_params())
    with pytest.raises(ConfigError, match=r"optimizer\.type = None"):
        build_optimizer({"params": {}}, make_params())


def test_unknown_param_names_key_value_and_allowed():
    with pytest.raises(ConfigError) as info:
        build_optimizer({"type": "AdamW", "params": {"lr": 0.1, "weight_deacy": 0.1}}, make_params())
    message = str(info.value)
    assert "optimizer.params.weight_deacy = 0.1" in message
    assert "did you mean 'weight_decay'" in message
    assert "allowed: adam_w_mode, amsgrad, betas, bias_correction, eps" in message
    with pytest.raises(ConfigError, match=r"optimizer\.params\.momentum = 0\.9: unknown parameter .*'Lion'"):
        build_optimizer({"type": "Lion", "params": {"momentum": 0.9}}, make_params())


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match=r"optimizer\.params\.lr = 'fast': expected a number"):
        build_optimizer({"type": "Adam", "params": {"lr": "fast"}}, make_params())
    with pytest.raises(ConfigError, match=r"optimizer\.params\.betas = \[0\.9\]: expected two numbers"):
        build_optimizer({"type": "Adam", "params": {"betas": [0.9]}}, make_params())
    with pytest.raises(ConfigError, match=r"optimizer\.params for type 'SGD'.*learning rate"):
        build_optimizer({"type": "SGD", "params": {"lr": -1.0}}, make_params())


def test_zero_supported_list_is_deepspeeds():
    params = make_params()
    supported = [
        torch.optim.Adam(params), torch.optim.AdamW(params), torch.optim.Adagrad(params),
        FusedAdam(params), DeepSpeedCPUAdam(params), DeepSpeedCPUAdagrad(params), FusedLion(params),
        DeepSpeedCPULion(params),
    ]
    assert all(is_zero_supported_optimizer(opt) for opt in supported)

    class MyAdam(torch.optim.Adam):
        pass

    for untested in (torch.optim.SGD(params, lr=0.1), FusedLamb(params), MyAdam(params), torch.optim.RMSprop(params)):
        assert not is_zero_supported_optimizer(untested), type(untested).__name__

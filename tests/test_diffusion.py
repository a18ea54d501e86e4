"""The shared diffusion module: schedule, parameterisations, DDIM, losses (checked against oracles)."""

from __future__ import annotations

import math

import pytest
import torch

from evpipe.nodes import diffusion
from evpipe.nodes.diffusion import CosineSchedule


def oracle(x0: torch.Tensor, prediction: str):
    """A model that knows the clean sample: its output is the exact target for any x_t and t."""
    schedule = CosineSchedule()

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = schedule.alpha_sigma(t)
        a, s = alpha.reshape(-1, 1, 1, 1), sigma.reshape(-1, 1, 1, 1)
        eps = (x_t - a * x0) / s.clamp(min=1e-8)
        return diffusion.target_for(prediction, x0, eps, alpha, sigma)

    return model


def test_cosine_schedule_endpoints_and_variance_preserving():
    schedule = CosineSchedule()
    t = torch.linspace(0, 1, 101)
    alpha, sigma = schedule.alpha_sigma(t)
    assert alpha[0] == pytest.approx(1.0) and sigma[0] == pytest.approx(0.0, abs=1e-3)
    assert alpha[-1] == pytest.approx(0.0, abs=1e-6) and sigma[-1] == pytest.approx(1.0)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(101))
    assert torch.all(alpha[1:] < alpha[:-1])  # strictly noisier with t
    # Nichol & Dhariwal: alpha_bar(t) = f(t)/f(0), f = cos²(((t + s)/(1 + s)) π/2)
    s = 0.008
    f = lambda v: math.cos((v + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    assert float(alpha[30] ** 2) == pytest.approx(f(0.3) / f(0.0), rel=1e-5)


@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])
def test_parameterisations_round_trip(prediction):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)
    alpha, sigma = CosineSchedule().alpha_sigma(torch.tensor([0.1, 0.4, 0.7, 0.9]))
    x_t = alpha.reshape(-1, 1, 1, 1) * x0 + sigma.reshape(-1, 1, 1, 1) * eps
    target = diffusion.target_for(prediction, x0, eps, alpha, sigma)
    x0_back, eps_back = diffusion.x0_eps_from_prediction(target, prediction, x_t, alpha, sigma)
    torch.testing.assert_close(x0_back, x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eps_back, eps, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("steps", [1, 3, 16])
def test_ddim_with_oracle_lands_on_the_clean_sample(steps):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, 8, 8, generator=g)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    out = diffusion.ddim_sample(oracle(x0, "v"), noise, CosineSchedule(), steps)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=1e-4)


def test_ddim_deterministic_for_seed_with_eta():
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(1, 2, 4, 4, generator=g)

    def noisy_model(x_t, t):  # an imperfect model: stochastic steps then matter
        return 0.5 * x_t

    runs = [diffusion.ddim_sample(noisy_model, x0.clone(), CosineSchedule(), 5, eta=1.0,
                                  generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    other = diffusion.ddim_sample(noisy_model, x0.clone(), CosineSchedule(), 5, eta=1.0,
                                  generator=torch.Generator().manual_seed(8))
    assert not torch.equal(runs[0], other)


def test_denoising_loss_is_zero_for_the_oracle_and_positive_otherwise():
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(8, 2, 4, 4, generator=g)
    schedule = CosineSchedule()
    # Per-sample oracle needs the noise the loss draws: reproduce it with the same generator state.
    state = torch.Generator().manual_seed(11)
    t = torch.rand(8, generator=state)
    eps = torch.randn(x0.shape, generator=state)
    alpha, sigma = schedule.alpha_sigma(t)

    def exact(x_t, t_in):
        torch.testing.assert_close(t_in, t)
        return diffusion.target_for("v", x0, eps, alpha, sigma)

    loss = diffusion.diffusion_loss(exact, x0, schedule, generator=torch.Generator().manual_seed(11))
    assert float(loss) < 1e-10
    zero = diffusion.diffusion_loss(lambda x_t, t_in: torch.zeros_like(x_t), x0, schedule,
                                    generator=torch.Generator().manual_seed(11))
    assert float(zero) > 0.1


def test_progressive_distillation_target_is_exact_for_the_oracle():
    """With an oracle teacher the two-step DDIM target is x0 itself, so an oracle student has zero loss
    and a wrong student does not."""
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(6, 4, 8, 8, generator=g)
    teacher = oracle(x0, "v")
    schedule = CosineSchedule()
    for steps in (1, 2, 8):
        loss = diffusion.progressive_distillation_loss(teacher, teacher, x0, schedule, steps,
                                                       generator=torch.Generator().manual_seed(5))
        assert float(loss) < 1e-6
    wrong = diffusion.progressive_distillation_loss(lambda x, t: torch.zeros_like(x), teacher, x0, schedule, 4,
                                                    generator=torch.Generator().manual_seed(5))
    assert float(wrong) > 0.1


def test_progressive_distillation_trains_a_one_step_student_to_match_the_teacher():
    """A linear student learns to do in one step what a two-step teacher does."""
    torch.manual_seed(0)
    teacher_net = torch.nn.Conv2d(2, 2, 1)
    student = torch.nn.Conv2d(2, 2, 1)
    student.load_state_dict(teacher_net.state_dict())
    schedule = CosineSchedule()
    g = torch.Generator().manual_seed(6)
    x0 = torch.randn(32, 2, 4, 4, generator=g)

    def teacher(x, t):
        with torch.no_grad():
            return teacher_net(x)

    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    losses = []
    for _ in range(80):
        loss = diffusion.progressive_distillation_loss(lambda x, t: student(x), teacher, x0, schedule, 1, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    noise = torch.randn(4, 2, 4, 4, generator=g)
    with torch.no_grad():
        two = diffusion.ddim_sample(teacher, noise, schedule, 2)
        one = diffusion.ddim_sample(lambda x, t: student(x), noise, schedule, 1)
        untrained = diffusion.ddim_sample(teacher, noise, schedule, 1)
    assert float((one - two).abs().mean()) < 0.5 * float((untrained - two).abs().mean())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="prediction"):
        diffusion.check_prediction("score")
    with pytest.raises(ValueError, match="steps"):
        CosineSchedule().timesteps(0)
    with pytest.raises(ValueError, match="power"):
        CosineSchedule().timesteps(4, power=0.0)


def test_timestep_power_moves_the_grid_towards_zero_and_keeps_its_ends():
    even, cubic = CosineSchedule().timesteps(4), CosineSchedule().timesteps(4, power=3.0)
    assert torch.allclose(even, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    assert torch.allclose(cubic, even**3)
    assert (cubic[0], cubic[-1]) == (1.0, 0.0)
    assert bool((cubic[1:-1] < even[1:-1]).all())

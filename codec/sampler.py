"""DDIM sampling exactly as the official SemantiCodec decoder does it (spec §5), batched.

The official sampler: uniform DDIM timesteps (1, 21, …, 981 for 50 steps), eta 1 (fresh noise at
every step, the last included), classifier-free guidance v = v_u + g·(v_c − v_u) on a
v-prediction UNet. Its per-step constants have a mixed precision that we keep: ᾱ_t float32,
ᾱ_prev and σ float64 (numpy/torch mixing), each materialised as a float32 scalar for the update.
They are computed on the CPU in float64 and moved to the device as float32, so MPS (no float64)
gets the same numbers.

Noise comes from a `NoiseSource`: per window, one x_T draw then one draw per step, in the official
order, so a decode fed the official generator state reproduces the official output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000
LATENT_SHAPE = (8, 256, 16)  # channels, time, freq of one 10.24 s window

# (x [B, 8, 256, 16], t [B], context [B, n, d]) → v [B, 8, 256, 16]
UNetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DDIMSchedule:
    """Per visited step (descending t): the timestep and the float32 scalars of the update."""

    timesteps: tuple[int, ...]
    a_prev: torch.Tensor  # float32 [S]
    sigma: torch.Tensor  # float32 [S]
    sqrt_alpha: torch.Tensor  # float32 [S]: sqrt_alphas_cumprod[t] (checkpoint buffer)
    sqrt_one_minus_alpha: torch.Tensor  # float32 [S]: sqrt_one_minus_alphas_cumprod[t]
    a_t: torch.Tensor  # float32 [S] (reported, not needed by the v-parameterised update)
    a_prev64: np.ndarray  # float64 [S], as the official sampler holds it
    sigma64: np.ndarray  # float64 [S]

    @property
    def steps(self) -> int:
        return len(self.timesteps)


def ddim_timesteps(steps: int, num_train: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """Ascending uniform DDIM timesteps: range(0, num_train, num_train // steps) + 1."""
    if steps < 1 or steps > num_train:
        raise ValueError(f"steps must be in 1..{num_train}, got {steps}")
    timesteps = np.arange(0, num_train, num_train // steps) + 1
    if timesteps[-1] >= num_train:
        # The official code would index past its 1000-entry schedule here (e.g. steps=3).
        raise ValueError(
            f"steps={steps} gives timestep {timesteps[-1]} ≥ {num_train} in the official "
            "uniform rule; choose another step count"
        )
    return timesteps


def ddim_schedule(
    alphas_cumprod: torch.Tensor,
    sqrt_alphas_cumprod: torch.Tensor,
    sqrt_one_minus_alphas_cumprod: torch.Tensor,
    steps: int,
    eta: float = 1.0,
) -> DDIMSchedule:
    """The official `make_ddim_sampling_parameters` with its dtypes, in visiting order."""
    ac = alphas_cumprod.detach().cpu().float()
    ts = ddim_timesteps(steps, ac.shape[0])
    alphas = ac[torch.from_numpy(ts)]  # float32
    prev_index = np.concatenate([[0], ts[:-1]])
    alphas_prev = ac[torch.from_numpy(prev_index)].double().numpy()  # float64 of float32 values
    # Official: eta·sqrt((1 − a_prev)/(1 − a_t)·(1 − a_t/a_prev)) with a_t a float32 tensor and a_prev a
    # float64 array. `ndarray / tensor` runs torch's __rtruediv__, i.e. a float32 reciprocal of
    # (1 − a_t) times the float64 numerator; the rest is float64.
    inv_one_minus_a = (1 - alphas).reciprocal().double().numpy()
    sigmas = eta * np.sqrt(inv_one_minus_a * (1 - alphas_prev) * (1 - alphas.double().numpy() / alphas_prev))
    order = slice(None, None, -1)
    t_desc = ts[order]
    index = torch.from_numpy(t_desc.copy())
    return DDIMSchedule(
        timesteps=tuple(int(t) for t in t_desc),
        a_t=alphas.flip(0).clone(),
        a_prev=torch.from_numpy(alphas_prev[order].astype(np.float32)),
        sigma=torch.from_numpy(sigmas[order].astype(np.float32)),
        sqrt_alpha=sqrt_alphas_cumprod.detach().cpu().float()[index],
        sqrt_one_minus_alpha=sqrt_one_minus_alphas_cumprod.detach().cpu().float()[index],
        a_prev64=alphas_prev[order].copy(),
        sigma64=np.asarray(sigmas[order], dtype=np.float64),
    )


class NoiseSource:
    """Gaussian draws for a list of windows, each window drawing x_T then one tensor per step.

    `generators[i]` is the generator window i draws from (windows of one clip share one, in window
    order, like consecutive official `decode` windows; `None` = torch's global CPU generator).
    `explicit` gives the noise directly: (x_T [W, 8, 256, 16], step_noise [W, S, 8, 256, 16]).
    Draws happen on the CPU (the official CPU stream) and are then moved to the device.
    """

    def __init__(
        self,
        generators: Sequence[torch.Generator | None] | None = None,
        explicit: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        if (generators is None) == (explicit is None):
            raise ValueError("give either generators or explicit noise")
        self.generators = generators
        self.explicit = explicit

    def draw(self, windows: Sequence[int], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise for `windows` (indices into the window list): x_T [W, ...], steps [S, W, ...]."""
        if self.explicit is not None:
            x_t, step_noise = self.explicit
            idx = torch.as_tensor(list(windows), dtype=torch.long)
            return x_t[idx].float(), step_noise[idx].float().transpose(0, 1)
        generators = self.generators
        assert generators is not None  # __init__: exactly one of generators / explicit is given
        x_t = torch.empty(len(windows), *LATENT_SHAPE)
        step_noise = torch.empty(steps, len(windows), *LATENT_SHAPE)
        for slot, window in enumerate(windows):  # the official per-window order
            generator = generators[window]
            x_t[slot] = torch.randn(1, *LATENT_SHAPE, generator=generator)[0]
            for step in range(steps):
                step_noise[step, slot] = torch.randn(1, *LATENT_SHAPE, generator=generator)[0]
        return x_t, step_noise


def guided_v(
    unet: UNetFn,
    x: torch.Tensor,
    t: int,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance: float,
    *,
    batched: bool = True,
) -> torch.Tensor:
    """v = v_u + g·(v_c − v_u). `batched` runs uncond and cond as one UNet call of 2·B rows."""
    timesteps = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    if guidance == 1.0:
        return unet(x, timesteps, cond)
    if batched:
        out = unet(torch.cat([x, x]), torch.cat([timesteps, timesteps]), torch.cat([uncond, cond]))
        v_uncond, v_cond = out.chunk(2)
    else:
        v_uncond = unet(x, timesteps, uncond)
        v_cond = unet(x, timesteps, cond)
    return v_uncond + guidance * (v_cond - v_uncond)


def ddim_sample(
    unet: UNetFn,
    schedule: DDIMSchedule,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    x_t: torch.Tensor,
    step_noise: torch.Tensor,
    guidance: float = 2.0,
    *,
    batched_cfg: bool = True,
) -> torch.Tensor:
    """Run every window of the batch through all steps together; returns the final latents."""
    device = cond.device
    x = x_t.to(device)

    def scalar(values: torch.Tensor, step: int) -> torch.Tensor:
        return values[step].to(device).reshape(1, 1, 1, 1)

    for step, t in enumerate(schedule.timesteps):
        v = guided_v(unet, x, t, cond, uncond, guidance, batched=batched_cfg)
        sqrt_a, sqrt_1ma = scalar(schedule.sqrt_alpha, step), scalar(schedule.sqrt_one_minus_alpha, step)
        e_t = sqrt_a * v + sqrt_1ma * x
        pred_x0 = sqrt_a * x - sqrt_1ma * v
        a_prev, sigma = scalar(schedule.a_prev, step), scalar(schedule.sigma, step)
        dir_xt = (1.0 - a_prev - sigma**2).sqrt() * e_t
        noise = sigma * step_noise[step].to(device)
        x = a_prev.sqrt() * pred_x0 + dir_xt + noise
    return x

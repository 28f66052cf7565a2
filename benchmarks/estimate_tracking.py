"""How BCN's estimated statistics track their input, for several update rates ``r``.

Micro-batch BCN normalizes with estimates that move toward each batch's statistics at rate r.
A small r averages out image-to-image noise but lags behind activations that drift as the
weights train; a large r follows drift but keeps the noise of single images. This script
feeds ``mmws.BCN`` a synthetic stream of single images whose per-channel statistics (a) jump
once (a sudden shift, as after a learning-rate step) and (b) drift steadily (as during
training), each image adding its own random offset, and reports per rate:

- ``steps_90``: steps after the jump until the estimate has covered 90 % of it;
- ``noise``: error of the mean estimate in the steady state, in units of the channel std
  (the image-to-image noise left in the estimate; a single image's offset is 0.3 std);
- ``drift_lag``: relative error of the variance estimate while the statistics drift.

And, on a stationary stream, what the variance estimate converges to (``population``): its
steady-state ratio to the population variance (within-image plus between-image), for
per-image channel offsets of 0.3 and 1 std, 1 and 2 images per step, and two forms of the
update at ``r = 0.1``:

- ``est_bn``: ``mmws.BCN`` (the authors' EstBN: the second moment about the previous mean
  estimate, ``σ̂² ← (1 - r) σ̂² + r mean((x - μ̂_old)²)``);
- ``batch_variance``: ``σ̂² ← (1 - r) σ̂² + r var_B`` (the batch's own biased variance: mmws
  before 0.2, labml's re-implementation), written out here.

Run: ``.venv/bin/python benchmarks/estimate_tracking.py`` (seconds; writes
``benchmarks/results/estimate_tracking.json``).
"""
import argparse
import json
from pathlib import Path

import torch

from mmws import BCN

RATES = (0.01, 0.03, 0.1, 0.3, 1.0)
CHANNELS = 64
STEPS, JUMP_AT, DRIFT_FROM = 400, 200, 300
IMAGE_OFFSET = 0.3  # per-image channel offsets, in channel stds
FORMS = ('est_bn', 'batch_variance')
OFFSETS = (0.3, 1.0)
IMAGES_PER_STEP = (1, 2)
STATIONARY_STEPS, SETTLE_STEPS = 1500, 300


def image_stream(steps: int, jump_at: int, drift_from: int, generator: torch.Generator):
    """Yields ``(image, mean, var)``: single 1×C×32×32 images and their population
    per-channel mean and variance (within-image plus between-image: what the estimates
    should converge to)."""
    for step in range(steps):
        mean = torch.full((CHANNELS, ), 0.0)
        std = torch.full((CHANNELS, ), 1.0)
        if step >= jump_at:
            mean, std = mean + 2.0, std * 2.0
        if step >= drift_from:
            std = std * (1 + 0.01 * (step - drift_from))  # 1 % per step
        # each image has its own channel offsets: the per-image noise the estimates average
        image_mean = mean + IMAGE_OFFSET * std * torch.randn(CHANNELS, generator=generator)
        x = torch.randn(1, CHANNELS, 32, 32, generator=generator) * std.view(1, -1, 1, 1)
        yield x + image_mean.view(1, -1, 1, 1), mean, std.square() * (1 + IMAGE_OFFSET**2)


def track(rate: float, steps: int = STEPS, jump_at: int = JUMP_AT,
          drift_from: int = DRIFT_FROM) -> dict:
    generator = torch.Generator().manual_seed(0)
    bcn = BCN(CHANNELS, num_groups=32, momentum=rate).train()
    history = []
    with torch.no_grad():
        for x, mean, var in image_stream(steps, jump_at, drift_from, generator):
            bcn(x)
            history.append((bcn.running_mean.mean().item(),
                            ((bcn.running_mean - mean).abs() / var.sqrt()).mean().item(),
                            ((bcn.running_var - var).abs() / var).mean().item()))
    before = 0.0
    covered = [(m - before) / 2.0 for m, _, _ in history[jump_at:drift_from]]
    steps_90 = next((i + 1 for i, c in enumerate(covered) if c >= 0.9), None)  # None: > window
    noise = sum(e for _, e, _ in history[jump_at - 100:jump_at]) / 100
    drift_lag = sum(e for _, _, e in history[-50:]) / 50
    return dict(rate=rate, steps_90=steps_90, noise=noise, drift_lag=drift_lag)


def population_ratio(form: str, offset: float, images: int, rate: float = 0.1,
                     steps: int = STATIONARY_STEPS, settle: int = SETTLE_STEPS) -> float:
    """Steady-state ``σ̂² / σ²_population`` (mean over channels and the steps after
    ``settle``) on a stationary stream of ``images`` per step with unit within-image variance
    and per-image channel offsets of ``offset`` std (population variance ``1 + offset²``)."""
    generator = torch.Generator().manual_seed(1)
    bcn = BCN(CHANNELS, num_groups=32, momentum=rate).train()
    running_var = torch.ones(CHANNELS, dtype=torch.float64)
    ratios = []
    with torch.no_grad():
        for step in range(steps):
            offsets = offset * torch.randn(images, CHANNELS, 1, 1, generator=generator)
            x = torch.randn(images, CHANNELS, 16, 16, generator=generator) + offsets
            if form == 'est_bn':
                bcn(x)
                estimate = bcn.running_var.double()
            else:
                batch_var = x.double().transpose(0, 1).reshape(CHANNELS, -1).var(1,
                                                                                unbiased=False)
                warm_rate = max(rate, 1 / (step + 1))
                running_var = (1 - warm_rate) * running_var + warm_rate * batch_var
                estimate = running_var
            if step >= settle:
                ratios.append(float(estimate.mean()) / (1 + offset**2))
    return sum(ratios) / len(ratios)


def population_rows() -> list:
    return [dict(form=form, offset=offset, images=images,
                 ratio=population_ratio(form, offset, images))
            for form in FORMS for offset in OFFSETS for images in IMAGES_PER_STEP]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=str(Path(__file__).parent / 'results' /
                                             'estimate_tracking.json'))
    args = parser.parse_args()
    rows = [track(rate) for rate in RATES]
    population = population_rows()
    print(f'{"rate r":>7} {"steps to 90% of a jump":>23} {"mean noise (std)":>17} '
          f'{"lag under 1%/step drift":>24}')
    for row in rows:
        steps_90 = row['steps_90'] or f'> {DRIFT_FROM - JUMP_AT}'
        print(f'{row["rate"]:>7} {steps_90:>23} {row["noise"]:>17.3f} '
              f'{row["drift_lag"]:>23.1%}')
    print('\nSteady-state variance estimate / population variance (r = 0.1):')
    print(f'{"form":>15} {"offset (std)":>13} {"images/step":>12} {"ratio":>7}')
    for row in population:
        print(f'{row["form"]:>15} {row["offset"]:>13} {row["images"]:>12} '
              f'{row["ratio"]:>7.3f}')
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(tracking=rows, population=population),
                                         indent=2) + '\n')


if __name__ == '__main__':
    main()

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


def image_stream(steps: int, jump_at: int, drift_from: int, generator: torch.Generator):
    """Yields ``(image, mean, var)``: single 1×C×32×32 images and their population
    per-channel mean and within-image variance (what the estimates should converge to)."""
    for step in range(steps):
        mean = torch.full((CHANNELS, ), 0.0)
        std = torch.full((CHANNELS, ), 1.0)
        if step >= jump_at:
            mean, std = mean + 2.0, std * 2.0
        if step >= drift_from:
            std = std * (1 + 0.01 * (step - drift_from))  # 1 % per step
        # each image has its own channel offsets: the per-image noise the estimates average
        image_mean = mean + 0.3 * std * torch.randn(CHANNELS, generator=generator)
        x = torch.randn(1, CHANNELS, 32, 32, generator=generator) * std.view(1, -1, 1, 1)
        yield x + image_mean.view(1, -1, 1, 1), mean, std.square()


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=str(Path(__file__).parent / 'results' /
                                             'estimate_tracking.json'))
    args = parser.parse_args()
    rows = [track(rate) for rate in RATES]
    print(f'{"rate r":>7} {"steps to 90% of a jump":>23} {"mean noise (std)":>17} '
          f'{"lag under 1%/step drift":>24}')
    for row in rows:
        steps_90 = row['steps_90'] or f'> {DRIFT_FROM - JUMP_AT}'
        print(f'{row["rate"]:>7} {steps_90:>23} {row["noise"]:>17.3f} '
              f'{row["drift_lag"]:>23.1%}')
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == '__main__':
    main()

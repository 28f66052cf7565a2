"""The trade-off the README documents for BCN's update rate and what its estimates converge to,
checked on the benchmark's streams."""
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / 'benchmarks' / 'estimate_tracking.py'


@pytest.fixture(scope='module')
def tracking_module():
    spec = importlib.util.spec_from_file_location('estimate_tracking', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def rows(tracking_module):
    return {rate: tracking_module.track(rate) for rate in (0.03, 0.1, 0.3)}


def test_faster_rates_follow_jumps_sooner(rows):
    assert rows[0.03]['steps_90'] > rows[0.1]['steps_90'] > rows[0.3]['steps_90']
    assert rows[0.1]['steps_90'] <= 30  # the default follows a jump within ~20 steps


def test_faster_rates_keep_more_single_image_noise(rows):
    assert rows[0.03]['noise'] < rows[0.1]['noise'] < rows[0.3]['noise']
    assert rows[0.1]['noise'] < 0.1  # in units of the channel std


def test_faster_rates_lag_less_under_drift(rows):
    assert rows[0.03]['drift_lag'] > rows[0.1]['drift_lag'] > rows[0.3]['drift_lag']


@pytest.mark.parametrize('images', [1, 2])
def test_micro_estimates_converge_to_the_population_variance(tracking_module, images):
    """BCN's variance estimate counts the between-image spread (1 std of per-image channel
    offsets: population variance 2); the batch's own variance would miss most of it."""
    est_bn = tracking_module.population_ratio('est_bn', 1.0, images, steps=600, settle=200)
    batch_variance = tracking_module.population_ratio('batch_variance', 1.0, images,
                                                      steps=600, settle=200)
    assert 0.97 < est_bn < 1.05
    assert batch_variance < 0.8

"""Bad batches and BCN's estimates: ``PreciseBCNHook`` leaves non-finite inputs out as a BCN
training step does (the layer's own skip is tested in ``test_bcn.py`` and, across processes,
in ``test_distributed.py``)."""
import copy

import pytest
import torch
from test_hooks import TRAINED, OffsetImages, TinyModel, collate, set_random_estimates

from mmws.hooks import recompute_bcn_estimates


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_precise_estimates_leave_out_a_non_finite_batch(bad):
    torch.manual_seed(0)
    model = TinyModel()
    set_random_estimates(model)
    data = OffsetImages(num=6).images
    poisoned = [image.clone() for image in data[2:4]]
    poisoned[1][0, 2, 3] = bad
    clean = [collate(data[:2]), collate(data[4:])]
    twin = copy.deepcopy(model)
    expected = recompute_bcn_estimates(twin, clean)
    with pytest.warns(RuntimeWarning, match='non-finite inputs left out'):
        counts = recompute_bcn_estimates(model, [clean[0], collate(poisoned), clean[1]])
    assert counts == expected
    for name in TRAINED:
        for key in ('running_mean', 'running_var'):
            got = getattr(model.get_submodule(name), key)
            assert torch.isfinite(got).all(), (name, key)
            assert torch.equal(got, getattr(twin.get_submodule(name), key)), (name, key)

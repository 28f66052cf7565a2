"""The main job's expected range: the table of the recorded draws and where a run falls in it."""
import json
import os.path as osp
import sys

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..', '..'))
sys.path.insert(0, osp.join(REPO, 'projects', 'toy', 'tools'))
import expected_range  # noqa: E402


def finetune(seed, box, mask, threads=1):
    return dict(experiment='finetune', name=f'train-toy_pretraining-seed{seed}_threads{threads}',
                setting={'pretraining seed': seed, 'threads': threads},
                metrics={'coco/bbox_mAP': box, 'coco/segm_mAP': mask})


RESULTS = dict(runs=[finetune(0, 0.098, 0.130), finetune(1, 0.112, 0.161),
                     dict(experiment='pretrain', name='pretrain_bcn-ws_seed0_threads1',
                          setting={'pretraining seed': 0, 'threads': 1},
                          metrics={'accuracy/top1': 90.0})], sessions=[])


def test_the_table_lists_each_draw_then_range_and_spread():
    table = expected_range.range_markdown(RESULTS)
    assert '| 0, 1 thread(s) | 9.8 | 13.0 |' in table
    assert '| 1, 1 thread(s) | 11.2 | 16.1 |' in table
    assert '| range | 9.8–11.2 | 13.0–16.1 |' in table
    assert '(2 fine-tunings, fine-tuning seed 0)' in table
    assert expected_range.range_markdown(dict(runs=[], sessions=[])) == 'No run recorded yet.'


def test_a_run_is_placed_inside_below_or_above_the_range(tmp_path):
    for box, where in ((0.100, 'inside'), (0.050, 'below'), (0.150, 'above')):
        (tmp_path / 'metrics.json').write_text(json.dumps([
            {'mode': 'val', 'iter': 150, 'coco/bbox_mAP': 0.01, 'coco/segm_mAP': 0.01},
            {'mode': 'val', 'iter': 300, 'coco/bbox_mAP': box, 'coco/segm_mAP': 0.140}]))
        lines = expected_range.compare(str(tmp_path), RESULTS).splitlines()
        assert lines[0].startswith(f'box AP {100 * box:.1f}: {where} the expected range 9.8–11.2')
        assert lines[1].startswith('mask AP 14.0: inside the expected range 13.0–16.1')


def test_every_recorded_draw_ran_and_the_readme_shows_them():
    with open(expected_range.RANGE_FILE) as f:
        recorded = json.load(f)
    table = expected_range.range_markdown(recorded)
    with open(osp.join(REPO, 'projects', 'toy', 'README.md')) as f:
        assert table in f.read()

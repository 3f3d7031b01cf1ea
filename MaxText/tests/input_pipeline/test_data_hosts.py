"""Each host reads only its share: records read per host, counted through instrumented sources.

Every random-access source the pipeline opens is wrapped so that each record read is logged. For two (and
four) hosts, the hosts' reads are disjoint, none is repeated, together they are exactly the split's records,
and the hosts' batches are the rows of the one-host batches.
"""

import numpy as np
import pytest

from MaxText.input_pipeline import make_eval_batches, make_train_iterator, packing, pipeline, sources
from MaxText.tests.helpers import data_config, write_grain, write_hf, write_tfds


class _Counting:
    """A record source that logs (source name, index) for every record read."""

    def __init__(self, source, log: list, name: str):
        self._source, self._log, self._name = source, log, name

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index):
        self._log.append((self._name, int(index)))
        return self._source[index]


@pytest.fixture(scope="module", name="configs")
def configs_fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("hosts")
    grain = write_grain(str(root / "grain"))
    hf = write_hf(str(root / "hf"))
    tfds_dir = str(root / "tfds")
    name = write_tfds(tfds_dir)
    return {
        "grain_array_record": data_config("grain", data_files=grain["array_record"]),
        "grain_parquet": data_config("grain", data_files=grain["parquet"]),
        "grain_mixture": data_config(
            "grain", data_files=f"{grain['array_record']}:0.7;{grain['parquet']}:0.3", packing_type="concat"
        ),
        "hf_json": data_config("hf", hf_path="json", data_files=hf["json"][1]),
        "hf_save_to_disk": data_config("hf", hf_path=hf["save_to_disk"][0]),
        "tfds": data_config("tfds", dataset_name=name, dataset_path=tfds_dir, eval_split="validation"),
    }


def _instrumented(monkeypatch, log: list):
    """Patches the source openers so that every source they return logs its reads into `log`."""
    real = {n: getattr(sources, n) for n in ("grain_source", "hf_source", "tfds_source")}
    monkeypatch.setattr(
        sources, "grain_source", lambda p, k, c: _Counting(real["grain_source"](p, k, c), log, p)
    )
    monkeypatch.setattr(
        sources, "hf_source", lambda p, f, s, **kw: _Counting(real["hf_source"](p, f, s, **kw), log, s)
    )
    monkeypatch.setattr(
        sources, "tfds_source", lambda n, d, s: _Counting(real["tfds_source"](n, d, s), log, s)
    )
    pipeline.clear_caches()  # opened sources and encoded records are cached per process


def _host_run(monkeypatch, cfg, process_index, process_count, split="train"):
    """(records read, first two batches) of one host, from a cold process cache."""
    log: list = []
    with monkeypatch.context() as m:
        _instrumented(m, log)
        if split == "train":
            it = make_train_iterator(cfg, process_index, process_count)
            batches = [next(it) for _ in range(2)]
        else:
            batches = make_eval_batches(cfg, 2, process_index, process_count)
    pipeline.clear_caches()
    return log, batches


@pytest.mark.parametrize(
    "name", ["grain_array_record", "grain_parquet", "grain_mixture", "hf_json", "hf_save_to_disk", "tfds"]
)
def test_each_host_reads_only_its_share(configs, monkeypatch, name):
    cfg = configs[name]
    split_records = {(p.name, int(i)) for p in pipeline.split_parts(cfg, "train") for i in p.records}
    _, one_host = _host_run(monkeypatch, cfg, 0, 1)
    for process_count in (2, 4) if name == "grain_array_record" else (2,):
        runs = [_host_run(monkeypatch, cfg, h, process_count) for h in range(process_count)]
        reads = [log for log, _ in runs]
        for log in reads:
            assert len(log) == len(set(log)), "a record was read twice"
            # Its lanes' records only: about 1/process_count of the split (8 lanes of 4 or 5 records each).
            assert len(log) <= len(split_records) / process_count * 1.3, (len(log), len(split_records))
        assert set().union(*map(set, reads)) == split_records and sum(map(len, reads)) == len(split_records)
        for step in range(2):  # and the hosts' rows are the one-host batch
            for k in packing.BATCH_KEYS:
                np.testing.assert_array_equal(
                    np.concatenate([batches[step][k] for _, batches in runs]), one_host[step][k], err_msg=k
                )


def test_eval_hosts_read_only_their_share(configs, monkeypatch):
    cfg = configs["tfds"]
    eval_records = {(p.name, int(i)) for p in pipeline.split_parts(cfg, "eval") for i in p.records}
    reads = [set(_host_run(monkeypatch, cfg, h, 2, "eval")[0]) for h in range(2)]
    assert not reads[0] & reads[1] and reads[0] | reads[1] == eval_records

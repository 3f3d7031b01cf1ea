"""Writing datasets in the formats `sources` reads, each file atomically (temporary name, then rename).

Used by `MaxText.prepare_data`, the tests and the throughput benchmark. A killed writer leaves at most a
`*.tmp-<pid>` file, never a file under the final name that is half written.
"""

import contextlib
import json
import os
from typing import Iterable, Iterator

from MaxText.config.errors import require


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path beside `path`, renamed to `path` only if the block completes."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_array_record(path: str, records: Iterable[dict]) -> int:
    """Writes JSON-object records to an ArrayRecord file; returns the number written."""
    array_record_module = require("array_record.python.array_record_module", "writing ArrayRecord files")
    count = 0
    with atomic_path(path) as tmp:
        writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
        try:
            for record in records:
                writer.write(json.dumps(record, separators=(",", ":")).encode("utf-8"))
                count += 1
        finally:
            writer.close()
    return count


def write_parquet(path: str, columns: dict[str, list]) -> None:
    """Writes columns (name -> values: str, or lists of ints) to a Parquet file."""
    pa = require("pyarrow", "writing Parquet files")
    pq = require("pyarrow.parquet", "writing Parquet files")

    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns), tmp)

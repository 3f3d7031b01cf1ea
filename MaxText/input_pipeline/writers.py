"""Writing datasets in the formats `sources` reads, each file atomically (temporary name, then rename).

Used by `MaxText.prepare_data`, the tests and the throughput benchmark. A killed writer leaves at most a
`*.tmp-<pid>` file, never a file under the final name that is half written.
"""

import contextlib
import json
import os
from typing import Iterable, Iterator

from array_record.python import array_record_module


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
    count = 0
    with atomic_path(path) as tmp:
        # pylint: disable-next=c-extension-no-member
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
    import pyarrow as pa  # pylint: disable=import-outside-toplevel
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel

    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns), tmp)

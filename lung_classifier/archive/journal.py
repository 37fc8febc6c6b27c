"""The job's journal (finished units, written as they finish) and the results table made from it.

A long job must survive being stopped, so each batch of finished units is written at once
as one Parquet part file of fixed columns (unit, unit_digest, package_digest, rows as JSON)
in ``OUT.parts/``; a part appears whole or not at all (written aside, then renamed). A rerun
reads the digests there and skips those units: finished work is never scored again. The
table a user reads (``OUT``: Parquet, or CSV) is rebuilt from the journal at the end of
every run, its columns the union of all rows' (a refused unit has no probabilities).
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FORMATS = (".parquet", ".csv")
_JOURNAL_COLUMNS = ("unit", "unit_digest", "package_digest", "rows")


class JournalError(ValueError):
    """The output holds another package's results, or cannot be read as a journal."""


class Journal:
    """``OUT.parts/`` beside the results file: the finished units, one part file per batch."""

    def __init__(self, out: Path, package_digest: str):
        if out.suffix.lower() not in FORMATS:
            raise JournalError(f"{out.name}: the results file ends in .parquet or .csv")
        self.out = out
        self.folder = out.with_name(out.name + ".parts")
        self.package_digest = package_digest
        self._written = len(self._parts())

    def done(self) -> set[str]:
        """Digests of the units already finished by this package; another package's results are an error."""
        import pyarrow.parquet as pq

        done: set[str] = set()
        for part in self._parts():
            table = pq.read_table(part, columns=["unit_digest", "package_digest"])
            others = set(table.column("package_digest").to_pylist()) - {self.package_digest}
            if others:
                raise JournalError(f"{self.folder} holds results of another package (digest {sorted(others)[0][:12]}); "
                                   f"this one is {self.package_digest[:12]}: write to another --out, or delete it")
            done.update(table.column("unit_digest").to_pylist())
        return done

    def write(self, finished: list[tuple[str, str, str]]) -> None:
        """Record finished units as (unit name, unit digest, rows JSON): one part file, all or nothing."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not finished:
            return
        names, digests, rows = zip(*finished)
        table = pa.table({"unit": list(names), "unit_digest": list(digests),
                          "package_digest": [self.package_digest] * len(names), "rows": list(rows)})
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{self._written:06d}-{uuid.uuid4().hex[:8]}.parquet"
        aside = self.folder / f".{name}.tmp"
        pq.write_table(table, aside)
        os.replace(aside, self.folder / name)
        self._written += 1

    def rows(self) -> Iterator[list[dict[str, Any]]]:
        """Each part's rows, in the order the parts were written."""
        import pyarrow.parquet as pq

        for part in self._parts():
            yield [row for text in pq.read_table(part, columns=["rows"]).column("rows").to_pylist()
                   for row in json.loads(text)]

    def _parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet")) if self.folder.is_dir() else []

    def publish(self) -> int:
        """Write the results table from the whole journal; returns its row count."""
        if self.out.suffix.lower() == ".csv":
            return self._publish_csv()
        return self._publish_parquet()

    def _publish_parquet(self) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.unify_schemas([_table(rows).schema for rows in self.rows()], promote_options="permissive")
        schema = pa.schema([field for field in schema if not _placeholder(field.name, schema.names)])
        aside = self.out.with_name(f".{self.out.name}.tmp")
        count = 0
        with pq.ParquetWriter(aside, schema) as writer:
            for rows in self.rows():
                table = _table(rows)
                columns = [table.column(field.name).cast(field.type) if field.name in table.column_names
                           else pa.nulls(len(table), field.type) for field in schema]
                writer.write_table(pa.Table.from_arrays(columns, schema=schema))
                count += len(table)
        os.replace(aside, self.out)
        return count

    def _publish_csv(self) -> int:
        columns: dict[str, None] = {}
        for rows in self.rows():
            for row in rows:
                columns.update(dict.fromkeys(row))
        aside = self.out.with_name(f".{self.out.name}.tmp")
        count = 0
        with open(aside, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=[name for name in columns if not _placeholder(name, columns)],
                                    extrasaction="ignore")
            writer.writeheader()
            for rows in self.rows():
                for row in rows:
                    writer.writerow({key: json.dumps(value) if isinstance(value, list) else value
                                     for key, value in row.items()})
                    count += 1
        os.replace(aside, self.out)
        return count


def _table(rows: list[dict[str, Any]]):
    import pyarrow as pa

    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return pa.Table.from_pylist([{name: row.get(name) for name in columns} for row in rows])


def _placeholder(name: str, names) -> bool:
    """A dict that was None in some rows (a flagged scan's probabilities) while its dotted columns carry the
    values of the others: left out, so ``probabilities`` is not a column of nulls beside ``probabilities.Normal``."""
    return any(other.startswith(name + ".") for other in names)

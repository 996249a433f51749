"""The character set of dbqueue's tables on MySQL and MariaDB.

A table created without one follows the database's default: on a latin1
database a job argument outside Latin-1 cannot be stored (error 1366 at
dispatch), and under the usual case-insensitive collations "Charge:1" and
"charge:1" are one idempotency key (and one lock, one unique-job key).
dbqueue's tables are utf8mb4 with the binary collation instead, whatever the
default: any Unicode text fits, and keys compare byte for byte, as on
PostgreSQL and SQLite (except that, as in every PAD SPACE collation, trailing
spaces do not count: "a" and "a " are one key). Revision 0005 converts the tables made before it; a
later revision that creates a table passes ``TABLE_OPTIONS``::

    op.create_table(f"{PREFIX}things", sa.Column(...), **TABLE_OPTIONS)

PostgreSQL and SQLite ignore these options. Columns added to an existing
table take the table's character set by themselves.
"""

CHARSET = "utf8mb4"
COLLATION = "utf8mb4_bin"

# SQLAlchemy reads a table's options under its dialect's name: "mysql" for
# mysql:// URLs (MariaDB servers included), "mariadb" for mariadb:// ones.
TABLE_OPTIONS: dict[str, str] = {
    f"{dialect}_{option}": value
    for dialect in ("mysql", "mariadb")
    for option, value in (("charset", CHARSET), ("collate", COLLATION))
}

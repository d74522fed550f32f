"""Cost of otel_apm.sql.parse_sql per statement, uncached and cached.

    .venv/bin/python bench/bench_sql.py [--loops N] [--repeats R]

parse_sql runs in the span processor for every DB span, so both numbers matter: the uncached cost
is paid once per distinct statement text (and for every statement with inlined values), the cached
cost on every repeat of a placeholder statement, which is almost every span.

The workload is a realistic mix of statements as drivers send them: SQLAlchemy, Django, asyncpg,
psycopg2, sqlite3 and MySQL styles, placeholders and inlined literals, short transaction control
and a few long statements (a wide ORM SELECT, a multi-row INSERT, a CTE).  Each measurement runs
the whole set N times and is repeated R times (default 7); the median of the R runs is printed as
microseconds per statement (the mean over the set, which the few long statements pull up).
"uncached" calls the undecorated function (_parse_sql_uncached); "cached" calls parse_sql after
one warm-up pass, so every call is a cache hit.  Then each statement is timed alone, uncached:
the median statement's cost and the three slowest are printed.  No assertions: these are figures
to read, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

from otel_apm.sql import SqlShape, _parse_sql_uncached, parse_sql

_WIDE_COLUMNS = ", ".join(f"orders.col_{i} AS orders_col_{i}" for i in range(40))

STATEMENTS: tuple[str, ...] = (
    # SQLAlchemy (psycopg2 pyformat, sqlite qmark)
    "SELECT users.id AS users_id, users.name AS users_name, users.fullname AS users_fullname "
    "FROM users WHERE users.id = %(pk_1)s",
    "SELECT addresses.id AS addresses_id, addresses.email_address AS addresses_email_address, "
    "addresses.user_id AS addresses_user_id FROM addresses WHERE ? = addresses.user_id",
    "INSERT INTO users (name, fullname) VALUES (%(name)s, %(fullname)s) RETURNING users.id",
    "UPDATE users SET fullname=%(fullname)s WHERE users.id = %(users_id)s",
    "SELECT users.id, users.name FROM users WHERE users.id IN (%(id_1_1)s, %(id_1_2)s, %(id_1_3)s)",
    f"SELECT {_WIDE_COLUMNS} FROM orders WHERE orders.customer_id = %(customer_id_1)s",
    # Django
    'SELECT "polls_question"."id", "polls_question"."question_text", "polls_question"."pub_date" '
    'FROM "polls_question" WHERE "polls_question"."pub_date" <= %s '
    'ORDER BY "polls_question"."pub_date" DESC LIMIT 5',
    'SELECT "auth_user"."id", "auth_user"."password" FROM "auth_user" INNER JOIN "auth_user_groups" '
    'ON ("auth_user"."id" = "auth_user_groups"."user_id") WHERE "auth_user_groups"."group_id" = %s',
    'INSERT INTO "django_session" ("session_key", "session_data", "expire_date") VALUES (%s, %s, %s)',
    # asyncpg
    "SELECT * FROM orders WHERE customer_id = $1 AND status = $2 ORDER BY created_at DESC LIMIT $3",
    "INSERT INTO events (id, payload) VALUES ($1, $2::jsonb) "
    "ON CONFLICT (id) DO UPDATE SET payload = EXCLUDED.payload",
    # inlined literals
    "SELECT * FROM accounts WHERE email = 'alice@example.com' AND active = TRUE",
    "SELECT * FROM products WHERE category_id IN (1, 2, 3, 4, 5) AND name LIKE '%shoe%' "
    "ORDER BY price LIMIT 10 OFFSET 20",
    "UPDATE accounts SET balance = balance - 100 WHERE id = 42",
    "INSERT INTO metrics (ts, name, value) VALUES "
    + ", ".join(f"('2024-05-01 10:{i:02d}:00', 'cpu', {i * 1.5})" for i in range(60)),
    # MySQL
    "SELECT `users`.`id`, `users`.`email` FROM `shop`.`users` WHERE `users`.`email` = 'bob@example.com' "
    "LIMIT 1",
    "INSERT INTO `orders` (`user_id`, `total`) VALUES (1, 9.99), (2, 19.99) "
    "ON DUPLICATE KEY UPDATE `total` = VALUES(`total`)",
    # CTE, subquery, comments
    "WITH regional_sales AS (SELECT region, SUM(amount) AS total_sales FROM orders GROUP BY region), "
    "top_regions AS (SELECT region FROM regional_sales WHERE total_sales > "
    "(SELECT SUM(total_sales) / 10 FROM regional_sales)) SELECT region, product, SUM(quantity) "
    "FROM orders WHERE region IN (SELECT region FROM top_regions) GROUP BY region, product",
    "SELECT * FROM users WHERE id = %s /*db_driver='psycopg2',framework='flask',route='%%2Fusers'*/",
    # transaction control and short statements
    "BEGIN",
    "COMMIT",
    "SAVEPOINT sa_savepoint_1",
    "SELECT 1",
    "SET search_path TO public",
)


def median_us_per_statement(
    parse: Callable[[str], SqlShape], statements: Sequence[str], loops: int, repeats: int
) -> float:
    runs: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(loops):
            for statement in statements:
                parse(statement)
        runs.append((time.perf_counter_ns() - start) / (loops * len(statements)) / 1000)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loops", type=int, default=500, help="passes over the statement set per run")
    parser.add_argument("--repeats", type=int, default=7, help="runs per measurement; the median is printed")
    args = parser.parse_args()

    chars = sum(len(s) for s in STATEMENTS)
    print(f"{len(STATEMENTS)} statements, {chars / len(STATEMENTS):.0f} chars on average")
    print(f"{args.loops} passes per run, median of {args.repeats} runs")

    uncached = median_us_per_statement(_parse_sql_uncached, STATEMENTS, args.loops, args.repeats)
    for statement in STATEMENTS:
        parse_sql(statement)
    cached = median_us_per_statement(parse_sql, STATEMENTS, args.loops * 20, args.repeats)

    print(f"uncached: {uncached:8.3f} us/statement")
    print(f"cached:   {cached:8.3f} us/statement")
    print(f"cached/uncached: {cached / uncached:.4f}")

    per_statement = sorted(
        (
            (median_us_per_statement(_parse_sql_uncached, [s], args.loops // 2 or 1, args.repeats), s)
            for s in STATEMENTS
        ),
        reverse=True,
    )
    typical = statistics.median(us for us, _ in per_statement)
    print(f"uncached, median statement: {typical:8.3f} us")
    print("uncached, slowest statements:")
    for us, statement in per_statement[:3]:
        print(f"  {us:8.2f} us  {len(statement):5d} chars  {statement[:60]}...")


if __name__ == "__main__":
    main()

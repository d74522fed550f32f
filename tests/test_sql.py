"""otel_apm.sql: statement shapes that group the same query and never carry a literal value.

The table holds real statements as drivers and ORMs send them (SQLAlchemy, Django, asyncpg,
psycopg2, sqlite3, MySQL clients, SQL Server and Oracle styles) with the exact shape expected, so a
change in normalization shows up as a diff of one readable line.  The property tests cover what a
table cannot: arbitrary input never raises, inlined values never survive, and the fingerprint is the
same in another process.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_apm import sql
from otel_apm.sql import MAX_STATEMENT_CHARS, SqlShape, _parse_sql_uncached, parse_sql

CASES = [
    pytest.param(
        (
            "SELECT users.id AS users_id, users.name AS users_name, users.fullname AS users_fullname "
            "FROM users WHERE users.id = %(pk_1)s"
        ),
        (
            "select users.id as users_id, users.name as users_name, users.fullname as users_fullname "
            "from users where users.id = ?"
        ),
        "SELECT",
        ("users",),
        id="sqla-orm-get-pyformat",
    ),
    pytest.param(
        (
            "SELECT addresses.id AS addresses_id, addresses.email_address AS addresses_email_address, "
            "addresses.user_id AS addresses_user_id FROM addresses WHERE ? = addresses.user_id"
        ),
        (
            "select addresses.id as addresses_id, addresses.email_address as addresses_email_address, "
            "addresses.user_id as addresses_user_id from addresses where ? = addresses.user_id"
        ),
        "SELECT",
        ("addresses",),
        id="sqla-lazyload-sqlite-reversed",
    ),
    pytest.param(
        "SELECT users.id, users.name FROM users WHERE users.id IN (%(id_1_1)s, %(id_1_2)s, %(id_1_3)s)",
        "select users.id, users.name from users where users.id in (?)",
        "SELECT",
        ("users",),
        id="sqla-expanding-in",
    ),
    pytest.param(
        "INSERT INTO users (name, fullname) VALUES (%(name)s, %(fullname)s) RETURNING users.id",
        "insert into users (name, fullname) values (?) returning users.id",
        "INSERT",
        ("users",),
        id="sqla-insert-returning",
    ),
    pytest.param(
        "INSERT INTO addresses (email_address, user_id) VALUES (?, ?), (?, ?), (?, ?)",
        "insert into addresses (email_address, user_id) values (?)",
        "INSERT",
        ("addresses",),
        id="sqla-executemany-values",
    ),
    pytest.param(
        "UPDATE users SET fullname=%(fullname)s WHERE users.id = %(users_id)s",
        "update users set fullname=? where users.id = ?",
        "UPDATE",
        ("users",),
        id="sqla-update-no-spaces",
    ),
    pytest.param(
        "DELETE FROM addresses WHERE addresses.id = ?",
        "delete from addresses where addresses.id = ?",
        "DELETE",
        ("addresses",),
        id="sqla-delete-qmark",
    ),
    pytest.param(
        (
            "SELECT count(*) AS count_1 FROM (SELECT users.id AS users_id FROM users JOIN addresses ON "
            "users.id = addresses.user_id WHERE addresses.email_address LIKE %(email_address_1)s) AS "
            "anon_1"
        ),
        (
            "select count(*) as count_1 from (select users.id as users_id from users join addresses on "
            "users.id = addresses.user_id where addresses.email_address like ?) as anon_1"
        ),
        "SELECT",
        ("users", "addresses"),
        id="sqla-count-subquery-join",
    ),
    pytest.param(
        (
            'SELECT "polls_question"."id", "polls_question"."question_text", "polls_question"."pub_date" '
            'FROM "polls_question" WHERE "polls_question"."pub_date" <= %s ORDER BY '
            '"polls_question"."pub_date" DESC LIMIT 5'
        ),
        (
            "select polls_question.id, polls_question.question_text, polls_question.pub_date from "
            "polls_question where polls_question.pub_date <= ? order by polls_question.pub_date desc "
            "limit ?"
        ),
        "SELECT",
        ("polls_question",),
        id="django-filter-order-limit",
    ),
    pytest.param(
        (
            'SELECT "auth_user"."id", "auth_user"."password" FROM "auth_user" INNER JOIN '
            '"auth_user_groups" ON ("auth_user"."id" = "auth_user_groups"."user_id") WHERE '
            '"auth_user_groups"."group_id" = %s'
        ),
        (
            "select auth_user.id, auth_user.password from auth_user inner join auth_user_groups on "
            "(auth_user.id = auth_user_groups.user_id) where auth_user_groups.group_id = ?"
        ),
        "SELECT",
        ("auth_user", "auth_user_groups"),
        id="django-inner-join",
    ),
    pytest.param(
        'INSERT INTO "django_session" ("session_key", "session_data", "expire_date") VALUES (%s, %s, %s)',
        "insert into django_session (session_key, session_data, expire_date) values (?)",
        "INSERT",
        ("django_session",),
        id="django-insert",
    ),
    pytest.param(
        'UPDATE "polls_choice" SET "votes" = ("polls_choice"."votes" + 1) WHERE "polls_choice"."id" = %s',
        "update polls_choice set votes = (polls_choice.votes + ?) where polls_choice.id = ?",
        "UPDATE",
        ("polls_choice",),
        id="django-f-expression",
    ),
    pytest.param(
        'SELECT (1) AS "a" FROM "django_session" WHERE "django_session"."session_key" = %s LIMIT 1',
        "select (?) as a from django_session where django_session.session_key = ? limit ?",
        "SELECT",
        ("django_session",),
        id="django-exists",
    ),
    pytest.param(
        "SELECT * FROM orders WHERE customer_id = $1 AND status = $2 ORDER BY created_at DESC LIMIT $3",
        "select * from orders where customer_id = ? and status = ? order by created_at desc limit ?",
        "SELECT",
        ("orders",),
        id="asyncpg-positional",
    ),
    pytest.param(
        (
            "INSERT INTO events (id, payload) VALUES ($1, $2::jsonb) ON CONFLICT (id) DO UPDATE SET "
            "payload = EXCLUDED.payload"
        ),
        (
            "insert into events (id, payload) values (?, ?::jsonb) on conflict (id) do update set "
            "payload = excluded.payload"
        ),
        "INSERT",
        ("events",),
        id="asyncpg-on-conflict",
    ),
    pytest.param(
        "SELECT id, name FROM products WHERE id = ANY($1::int[])",
        "select id, name from products where id = any(?::int[])",
        "SELECT",
        ("products",),
        id="asyncpg-any-array-cast",
    ),
    pytest.param(
        "SELECT * FROM accounts WHERE id = 42",
        "select * from accounts where id = ?",
        "SELECT",
        ("accounts",),
        id="inline-int",
    ),
    pytest.param(
        "SELECT * FROM accounts WHERE email = 'alice@example.com' AND active = TRUE",
        "select * from accounts where email = ? and active = ?",
        "SELECT",
        ("accounts",),
        id="inline-string-bool",
    ),
    pytest.param(
        "SELECT * FROM products WHERE category_id IN (1, 2, 3) AND price BETWEEN 10.5 AND 99.99",
        "select * from products where category_id in (?) and price between ? and ?",
        "SELECT",
        ("products",),
        id="in-numbers-between",
    ),
    pytest.param(
        "SELECT * FROM products WHERE sku IN ('A-1', 'B-2', 'C-3')",
        "select * from products where sku in (?)",
        "SELECT",
        ("products",),
        id="in-strings",
    ),
    pytest.param(
        "SELECT * FROM notes WHERE body = 'it''s here' OR body = 'a\\'b'",
        "select * from notes where body = ? or body = ?",
        "SELECT",
        ("notes",),
        id="escaped-quotes",
    ),
    pytest.param(
        "SELECT * FROM logs WHERE message LIKE E'%\\\\n%' AND level = E'warn'",
        "select * from logs where message like ? and level = ?",
        "SELECT",
        ("logs",),
        id="e-strings",
    ),
    pytest.param(
        (
            "CREATE OR REPLACE FUNCTION add_one(i integer) RETURNS integer AS $$ BEGIN RETURN i + 1; "
            "END; $$ LANGUAGE plpgsql"
        ),
        "create or replace function add_one(i integer) returns integer as ? language plpgsql",
        "CREATE",
        (),
        id="dollar-function-body",
    ),
    pytest.param(
        "DO $body$ BEGIN PERFORM pg_notify('chan', 'x'); END $body$",
        "do ?",
        "DO",
        (),
        id="dollar-tagged-do",
    ),
    pytest.param(
        (
            "WITH regional_sales AS (SELECT region, SUM(amount) AS total_sales FROM orders GROUP BY "
            "region), top_regions AS (SELECT region FROM regional_sales WHERE total_sales > (SELECT "
            "SUM(total_sales) / 10 FROM regional_sales)) SELECT region, product, SUM(quantity) AS "
            "product_units FROM orders WHERE region IN (SELECT region FROM top_regions) GROUP BY region, "
            "product"
        ),
        (
            "with regional_sales as (select region, sum(amount) as total_sales from orders group by "
            "region), top_regions as (select region from regional_sales where total_sales > (select "
            "sum(total_sales) / ? from regional_sales)) select region, product, sum(quantity) as "
            "product_units from orders where region in (select region from top_regions) group by region, "
            "product"
        ),
        "SELECT",
        ("orders",),
        id="cte-multiple",
    ),
    pytest.param(
        (
            "WITH RECURSIVE subordinates AS (SELECT employee_id, manager_id FROM employees WHERE "
            "employee_id = 2 UNION SELECT e.employee_id, e.manager_id FROM employees e INNER JOIN "
            "subordinates s ON s.employee_id = e.manager_id) SELECT * FROM subordinates"
        ),
        (
            "with recursive subordinates as (select employee_id, manager_id from employees where "
            "employee_id = ? union select e.employee_id, e.manager_id from employees e inner join "
            "subordinates s on s.employee_id = e.manager_id) select * from subordinates"
        ),
        "SELECT",
        ("employees",),
        id="cte-recursive",
    ),
    pytest.param(
        (
            "WITH moved AS (DELETE FROM queue WHERE id = $1 RETURNING *) INSERT INTO archive SELECT * "
            "FROM moved"
        ),
        "with moved as (delete from queue where id = ? returning *) insert into archive select * from moved",
        "INSERT",
        ("queue", "archive"),
        id="cte-data-modifying",
    ),
    pytest.param(
        (
            "INSERT INTO archive (id, body) SELECT id, body FROM messages WHERE created_at < now() - "
            "interval '30 days'"
        ),
        "insert into archive (id, body) select id, body from messages where created_at < now() - interval ?",
        "INSERT",
        ("archive", "messages"),
        id="insert-select",
    ),
    pytest.param(
        (
            "UPDATE accounts SET balance = accounts.balance + t.amount FROM transfers t WHERE "
            "t.account_id = accounts.id AND t.batch = 7"
        ),
        (
            "update accounts set balance = accounts.balance + t.amount from transfers t where "
            "t.account_id = accounts.id and t.batch = ?"
        ),
        "UPDATE",
        ("accounts", "transfers"),
        id="update-from",
    ),
    pytest.param(
        "DELETE FROM sessions s USING users u WHERE s.user_id = u.id AND u.disabled",
        "delete from sessions s using users u where s.user_id = u.id and u.disabled",
        "DELETE",
        ("sessions", "users"),
        id="delete-using",
    ),
    pytest.param(
        (
            "SELECT o.id, c.name FROM orders o LEFT JOIN customers c ON c.id = o.customer_id RIGHT JOIN "
            "regions r ON r.id = c.region_id FULL OUTER JOIN audit a ON a.order_id = o.id"
        ),
        (
            "select o.id, c.name from orders o left join customers c on c.id = o.customer_id right join "
            "regions r on r.id = c.region_id full outer join audit a on a.order_id = o.id"
        ),
        "SELECT",
        ("orders", "customers", "regions", "audit"),
        id="join-kinds",
    ),
    pytest.param(
        "SELECT * FROM users WHERE id IN (SELECT user_id FROM orders WHERE total > 100)",
        "select * from users where id in (select user_id from orders where total > ?)",
        "SELECT",
        ("users", "orders"),
        id="in-subquery",
    ),
    pytest.param(
        (
            "SELECT data->>'name' AS name, (data->'address')->>'city' FROM profiles WHERE data ? 'email' "
            "AND id::text = '7'"
        ),
        "select data->>? as name, (data->?)->>? from profiles where data ? ? and id::text = ?",
        "SELECT",
        ("profiles",),
        id="json-operators",
    ),
    pytest.param(
        "SELECT * FROM events WHERE tags ?| array['a', 'b'] AND payload #>> '{user,id}' = '42'",
        "select * from events where tags ?| array[?, ?] and payload #>> ? = ?",
        "SELECT",
        ("events",),
        id="jsonb-exists-any-path",
    ),
    pytest.param(
        "SELECT id FROM items ORDER BY score DESC, id ASC LIMIT 20 OFFSET 40",
        "select id from items order by score desc, id asc limit ? offset ?",
        "SELECT",
        ("items",),
        id="order-limit-offset",
    ),
    pytest.param(
        "SELECT pg_sleep(0.2)",
        "select pg_sleep(?)",
        "SELECT",
        (),
        id="pg-sleep",
    ),
    pytest.param(
        "SELECT * FROM t WHERE x = -1 AND y = 3 - 2 AND z > -0.5e3 AND h = 0xFF",
        "select * from t where x = ? and y = ? - ? and z > ? and h = ?",
        "SELECT",
        ("t",),
        id="negative-and-hex-numbers",
    ),
    pytest.param(
        "BEGIN",
        "begin",
        "BEGIN",
        (),
        id="begin",
    ),
    pytest.param(
        "COMMIT",
        "commit",
        "COMMIT",
        (),
        id="commit",
    ),
    pytest.param(
        "ROLLBACK TO SAVEPOINT sa_savepoint_1",
        "rollback to savepoint sa_savepoint_1",
        "ROLLBACK",
        (),
        id="rollback-to-savepoint",
    ),
    pytest.param(
        "SAVEPOINT sa_savepoint_1",
        "savepoint sa_savepoint_1",
        "SAVEPOINT",
        (),
        id="savepoint",
    ),
    pytest.param(
        "START TRANSACTION READ ONLY",
        "start transaction read only",
        "START",
        (),
        id="start-transaction",
    ),
    pytest.param(
        "SET search_path TO public",
        "set search_path to public",
        "SET",
        (),
        id="set-search-path",
    ),
    pytest.param(
        "SET NAMES utf8mb4",
        "set names utf8mb4",
        "SET",
        (),
        id="set-names",
    ),
    pytest.param(
        "SHOW TRANSACTION ISOLATION LEVEL",
        "show transaction isolation level",
        "SHOW",
        (),
        id="show",
    ),
    pytest.param(
        "SHOW COLUMNS FROM `orders`",
        "show columns from orders",
        "SHOW",
        ("orders",),
        id="show-columns-backticks",
    ),
    pytest.param(
        "CALL refresh_stats(10, 'daily')",
        "call refresh_stats(?, ?)",
        "CALL",
        (),
        id="call",
    ),
    pytest.param(
        "PRAGMA foreign_keys = ON",
        "pragma foreign_keys = on",
        "PRAGMA",
        (),
        id="pragma-set",
    ),
    pytest.param(
        'PRAGMA table_info("users")',
        "pragma table_info(users)",
        "PRAGMA",
        (),
        id="pragma-quoted-arg",
    ),
    pytest.param(
        (
            'CREATE TABLE IF NOT EXISTS "users" (id INTEGER PRIMARY KEY AUTOINCREMENT, name VARCHAR(255) '
            "NOT NULL DEFAULT 'anon')"
        ),
        (
            "create table if not exists users (id integer primary key autoincrement, name varchar(?) not "
            "null default ?)"
        ),
        "CREATE",
        ("users",),
        id="create-table",
    ),
    pytest.param(
        "CREATE INDEX idx_users_name ON users (name)",
        "create index idx_users_name on users (name)",
        "CREATE",
        ("users",),
        id="create-index",
    ),
    pytest.param(
        "ALTER TABLE users ADD COLUMN age INTEGER DEFAULT 0",
        "alter table users add column age integer default ?",
        "ALTER",
        ("users",),
        id="alter-table",
    ),
    pytest.param(
        "DROP TABLE IF EXISTS tmp_a, tmp_b",
        "drop table if exists tmp_a, tmp_b",
        "DROP",
        ("tmp_a", "tmp_b"),
        id="drop-table-list",
    ),
    pytest.param(
        "TRUNCATE TABLE audit_log",
        "truncate table audit_log",
        "TRUNCATE",
        ("audit_log",),
        id="truncate",
    ),
    pytest.param(
        (
            "SELECT `users`.`id`, `users`.`email` FROM `shop`.`users` WHERE `users`.`email` = "
            '"bob@example.com" LIMIT 1'
        ),
        "select users.id, users.email from shop.users where users.email = ? limit ?",
        "SELECT",
        ("shop.users",),
        id="mysql-backticks-dq-string",
    ),
    pytest.param(
        (
            "INSERT INTO `orders` (`user_id`, `total`) VALUES (1, 9.99), (2, 19.99) ON DUPLICATE KEY "
            "UPDATE `total` = VALUES(`total`)"
        ),
        "insert into orders (user_id, total) values (?) on duplicate key update total = values (total)",
        "INSERT",
        ("orders",),
        id="mysql-multirow-on-duplicate",
    ),
    pytest.param(
        "SELECT * FROM posts # MySQL comment with 'quote'\nWHERE id = 5",
        "select * from posts where id = ?",
        "SELECT",
        ("posts",),
        id="mysql-hash-comment",
    ),
    pytest.param(
        "SELECT SQL_CALC_FOUND_ROWS * FROM posts WHERE author = 'bob' LIMIT 10, 20",
        "select sql_calc_found_rows * from posts where author = ? limit ?, ?",
        "SELECT",
        ("posts",),
        id="mysql-limit-offset-comma",
    ),
    pytest.param(
        "REPLACE INTO kv (k, v) VALUES ('a', 'b')",
        "replace into kv (k, v) values (?)",
        "REPLACE",
        ("kv",),
        id="mysql-replace",
    ),
    pytest.param(
        "SELECT [u].[Id], [u].[Name] FROM [dbo].[Users] AS [u] WHERE [u].[Id] = @p0",
        "select u.id, u.name from dbo.users as u where u.id = ?",
        "SELECT",
        ("dbo.users",),
        id="sqlserver-brackets",
    ),
    pytest.param(
        "SELECT name FROM employees WHERE dept = :dept AND hired > :1",
        "select name from employees where dept = ? and hired > ?",
        "SELECT",
        ("employees",),
        id="oracle-named-numbered",
    ),
    pytest.param(
        "SELECT * FROM t /*+ INDEX(t idx_a) */ WHERE a = 1",
        "select * from t where a = ?",
        "SELECT",
        ("t",),
        id="optimizer-hint",
    ),
    pytest.param(
        (
            "SELECT * FROM users WHERE id = %s "
            "/*db_driver='psycopg2%%3A2.9.9',framework='flask%%3A3.0.0',route='%%2Fusers'*/"
        ),
        "select * from users where id = ?",
        "SELECT",
        ("users",),
        id="sqlcommenter",
    ),
    pytest.param(
        "/* leading comment */ SELECT 1 -- trailing comment",
        "select ?",
        "SELECT",
        (),
        id="leading-and-trailing-comments",
    ),
    pytest.param(
        "SELECT 1; SELECT 2;",
        "select ?; select ?",
        "SELECT",
        (),
        id="multi-statement",
    ),
    pytest.param(
        (
            "BEGIN; UPDATE stock SET qty = qty - 1 WHERE sku = 'X'; INSERT INTO moves (sku) VALUES "
            "('X'); COMMIT"
        ),
        "begin; update stock set qty = qty - ? where sku = ?; insert into moves (sku) values (?); commit",
        "BEGIN",
        ("stock", "moves"),
        id="multi-statement-transaction",
    ),
    pytest.param(
        "INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
        "insert or replace into settings (key, value) values (?)",
        "INSERT",
        ("settings",),
        id="sqlite-insert-or-replace",
    ),
    pytest.param(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
        "select count(*) from sqlite_master where type = ? and name = ?",
        "SELECT",
        ("sqlite_master",),
        id="sqlite-master",
    ),
    pytest.param(
        "SELECT extract(epoch FROM created_at) FROM events WHERE created_at > now() - interval '1 hour'",
        "select extract(epoch from created_at) from events where created_at > now() - interval ?",
        "SELECT",
        ("events",),
        id="extract-from",
    ),
    pytest.param(
        "SELECT * FROM a, b WHERE a.id = b.a_id",
        "select * from a, b where a.id = b.a_id",
        "SELECT",
        ("a", "b"),
        id="implicit-join",
    ),
    pytest.param(
        'SELECT * FROM "Orders" o WHERE o."CustomerID" = N\'ALFKI\'',
        "select * from orders o where o.customerid = ?",
        "SELECT",
        ("orders",),
        id="quoted-mixed-case-n-string",
    ),
    pytest.param(
        "VACUUM ANALYZE events",
        "vacuum analyze events",
        "VACUUM",
        (),
        id="vacuum",
    ),
    pytest.param(
        "EXPLAIN ANALYZE SELECT * FROM events WHERE id = 1",
        "explain analyze select * from events where id = ?",
        "EXPLAIN",
        ("events",),
        id="explain",
    ),
    pytest.param(
        "LOCK TABLE accounts IN SHARE ROW EXCLUSIVE MODE",
        "lock table accounts in share row exclusive mode",
        "LOCK",
        ("accounts",),
        id="lock-table",
    ),
    pytest.param(
        "COPY events (id, payload) FROM STDIN WITH (FORMAT csv)",
        "copy events (id, payload) from stdin with (format csv)",
        "COPY",
        ("events",),
        id="copy-from-stdin",
    ),
    pytest.param(
        "SELECT * FROM jobs WHERE status = 'queued' ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1",
        "select * from jobs where status = ? order by id for update skip locked limit ?",
        "SELECT",
        ("jobs",),
        id="for-update-skip-locked",
    ),
    pytest.param(
        "SELECT x FROM t WHERE y IS DISTINCT FROM z AND w IS NOT NULL AND v = NULL",
        "select x from t where y is distinct from z and w is not null and v = null",
        "SELECT",
        ("t",),
        id="distinct-from-null",
    ),
    pytest.param(
        "SELECT * FROM t WHERE a = x'1F' AND b = b'101' AND c = 1e-3",
        "select * from t where a = ? and b = ? and c = ?",
        "SELECT",
        ("t",),
        id="hex-bit-exponent",
    ),
    pytest.param(
        "SELECT * FROM t WHERE (a, b) IN ((1, 2), (3, 4))",
        "select * from t where (a, b) in (?)",
        "SELECT",
        ("t",),
        id="row-value-in",
    ),
]


@pytest.mark.parametrize(("statement", "normalized", "operation", "tables"), CASES)
def test_real_statement(statement: str, normalized: str, operation: str, tables: tuple[str, ...]) -> None:
    shape = parse_sql(statement)
    assert shape.normalized == normalized
    assert shape.operation == operation
    assert shape.tables == tables
    assert shape.truncated is False
    assert shape.fingerprint == hashlib.blake2b(normalized.encode(), digest_size=8).hexdigest()


@pytest.mark.parametrize(("statement", "normalized", "operation", "tables"), CASES)
def test_normalizing_a_shape_again_changes_nothing(
    statement: str, normalized: str, operation: str, tables: tuple[str, ...]
) -> None:
    # A shape stored by one process and parsed again by another must land in the same group.
    again = parse_sql(normalized)
    assert (again.normalized, again.operation, again.tables) == (normalized, operation, tables)


# -- same shape, same fingerprint -----------------------------------------------------------------

SAME_SHAPE_GROUPS = {
    "literal-and-placeholder-styles": [
        "SELECT * FROM users WHERE id = 1",
        "SELECT * FROM users WHERE id = 42",
        "SELECT * FROM users WHERE id = -7",
        "SELECT * FROM users WHERE id = 'abc'",
        "SELECT * FROM users WHERE id = %s",
        "SELECT * FROM users WHERE id = %(id)s",
        "SELECT * FROM users WHERE id = ?",
        "SELECT * FROM users WHERE id = $1",
        "SELECT * FROM users WHERE id = :id",
        "SELECT * FROM users WHERE id = :1",
        "SELECT * FROM users WHERE id = @p1",
    ],
    "quoting-case-whitespace-comments": [
        "SELECT * FROM users WHERE id = 1",
        'SELECT * FROM "users" WHERE "id" = 1',
        "SELECT * FROM `users` WHERE `id` = 1",
        "SELECT * FROM [users] WHERE [id] = 1",
        'select *\n  from "Users"\n where ID = 1;',
        "/* app=web */ SELECT * FROM users -- why\n WHERE id = 1 /*traceparent='00-ab-cd-01'*/",
    ],
    "in-list-lengths": [
        "SELECT * FROM t WHERE a IN (1)",
        "SELECT * FROM t WHERE a IN (1, 2, 3)",
        "SELECT * FROM t WHERE a IN ('x','y')",
        "SELECT * FROM t WHERE a IN (%s, %s, %s, %s)",
        "SELECT * FROM t WHERE a IN ($1,$2)",
        "SELECT * FROM t WHERE a IN (-1, 2.5, 0x10)",
    ],
    "values-rows": [
        "INSERT INTO t (a, b) VALUES (1, 'x')",
        "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3, NULL)",
        "INSERT INTO t (a, b) VALUES (%s, %s), (%s, %s)",
        "INSERT INTO t (a, b) VALUES(?,?)",
    ],
    "string-literal-styles": [
        "SELECT * FROM t WHERE s = 'plain'",
        "SELECT * FROM t WHERE s = 'it''s'",
        "SELECT * FROM t WHERE s = 'it\\'s'",
        "SELECT * FROM t WHERE s = E'tab\\there'",
        "SELECT * FROM t WHERE s = N'unicode'",
        "SELECT * FROM t WHERE s = $$dollar 'quoted'$$",
        "SELECT * FROM t WHERE s = $q$tagged$q$",
        'SELECT * FROM t WHERE s = "mysql double quoted"',
    ],
}


@pytest.mark.parametrize("statements", SAME_SHAPE_GROUPS.values(), ids=SAME_SHAPE_GROUPS.keys())
def test_same_shape_same_fingerprint(statements: list[str]) -> None:
    shapes = {parse_sql(s).normalized for s in statements}
    assert len(shapes) == 1, shapes
    assert len({parse_sql(s).fingerprint for s in statements}) == 1


def test_different_shapes_different_fingerprints() -> None:
    statements = [
        "SELECT * FROM users WHERE id = 1",
        "SELECT * FROM users WHERE name = 1",
        "SELECT * FROM orders WHERE id = 1",
        "SELECT id FROM users WHERE id = 1",
        "SELECT * FROM users WHERE id > 1",
        "SELECT * FROM users WHERE id = 1 LIMIT 1",
        "SELECT * FROM users WHERE id IN (SELECT user_id FROM orders)",
        "SELECT * FROM users WHERE id IN (1, 2)",
        "DELETE FROM users WHERE id = 1",
        "UPDATE users SET id = 1",
        "SELECT * FROM users WHERE id = 1; SELECT 1",
        "SELECT * FROM users WHERE id = 1 AND b = 2",
        "SELECT * FROM users WHERE id = 1 OR b = 2",
    ]
    fingerprints = [parse_sql(s).fingerprint for s in statements]
    assert len(set(fingerprints)) == len(statements)


def test_in_subquery_keeps_its_shape_and_any_stays() -> None:
    assert parse_sql("SELECT * FROM a WHERE x IN (SELECT y FROM b WHERE z = 3)").normalized == (
        "select * from a where x in (select y from b where z = ?)"
    )
    assert parse_sql("SELECT * FROM a WHERE x = ANY(%s)").normalized == "select * from a where x = any(?)"


def test_minus_is_a_sign_only_where_a_value_starts() -> None:
    assert parse_sql("SELECT a - 1, b -1, (-1), f(-2, -3) FROM t WHERE c = -4 AND d < - 5").normalized == (
        "select a - ?, b -?, (?), f(?, ?) from t where c = ? and d < ?"
    )


def test_casts_and_assignment_are_not_placeholders() -> None:
    shape = parse_sql("SELECT x::int, '1'::text, y::numeric(10,2) FROM t WHERE @v := 1")
    assert shape.normalized == "select x::int, ?::text, y::numeric(?, ?) from t where ? := ?"


def test_cte_names_are_not_tables_but_their_bodies_are() -> None:
    shape = parse_sql(
        "WITH a AS (SELECT * FROM x), b (k) AS MATERIALIZED (SELECT * FROM y JOIN a ON a.id = y.id) "
        "UPDATE z SET v = b.v FROM b WHERE z.k = b.k"
    )
    assert shape.operation == "UPDATE"
    assert shape.tables == ("x", "y", "z")


def test_with_and_nothing_after_it_has_no_operation() -> None:
    assert parse_sql("WITH a AS (SELECT 1").operation == ""


def test_unknown_or_empty_statements() -> None:
    for text in ("", "   ", "-- only a comment", "/* only */", ";;", "hello world", "42"):
        shape = parse_sql(text)
        assert shape.operation == ""
        assert shape.tables == ()
    assert parse_sql("  ;; ").normalized == ""


def test_unterminated_literals_and_comments_run_to_the_end() -> None:
    assert parse_sql("SELECT * FROM t WHERE a = 'secret").normalized == "select * from t where a = ?"
    assert parse_sql("SELECT * FROM t WHERE a = $$secret").normalized == "select * from t where a = ?"
    assert parse_sql("SELECT * FROM t /* secret = 'x").normalized == "select * from t"
    assert parse_sql('SELECT * FROM t WHERE a = "secret').normalized == "select * from t where a = ?"


def test_mysql_double_quoted_values_with_odd_content_never_survive() -> None:
    # Outside a comparison, "..." could be a PostgreSQL identifier or a MySQL string: anything that
    # is not a plain name is treated as a value.
    shape = parse_sql('INSERT INTO t (a, b) VALUES ("John Smith", "a@b.com")')
    assert shape.normalized == "insert into t (a, b) values (?)"


@pytest.mark.parametrize(
    ("statement", "normalized"),
    [
        # PostgreSQL operators that look like comment or placeholder starts.
        (
            "SELECT a#b, j #> '{a}', j #>> '{a}', j #- '{a}' FROM t",
            "select a#b, j #> ?, j #>> ?, j #- ? from t",
        ),
        (
            "SELECT @@version, @x FROM t WHERE tsv @@ q AND r @> s AND s <@ r",
            "select @@version, ? from t where tsv @@ q and r @> s and s <@ r",
        ),
        # Literal forms that leave something in front of or behind the `?` until fixed up.
        ("SELECT .5, 5., -.5e-3, ?1, ?2 FROM t", "select ?, ?, ?, ?, ? from t"),
        (
            "SELECT _utf8mb4'x', _binary'y', N'z', X'1F', B'01', U&'d' FROM t",
            "select ?, ?, ?, ?, ?, ? from t",
        ),
        ("SELECT TRUE, false, is_true, t.true FROM t", "select ?, ?, is_true, t.true from t"),
        # Spacing before an IN or VALUES list does not split a shape.
        (
            "SELECT * FROM t WHERE a IN(1,2) AND b NOT IN ( 3 , 4 )",
            "select * from t where a in (?) and b not in (?)",
        ),
        # Identifiers: digits, $ and non-ASCII letters belong to them.
        (
            "SELECT col_1, t2.x$y, größe FROM t2 WHERE größe = 3",
            "select col_1, t2.x$y, größe from t2 where größe = ?",
        ),
        # Odd quoted names lose their quotes where only a name can stand, and become values elsewhere.
        (
            'SELECT "Order Items"."Qty" FROM "Order Items" WHERE "x" = "y z"',
            "select order items.qty from order items where x = ?",
        ),
        # Array subscripts and slices are not SQL Server identifiers.
        (
            "SELECT arr[1], arr[i], arr[1:2], ARRAY[1, 2] FROM t",
            "select arr[?], arr[i], arr[?:?], array[?, ?] from t",
        ),
    ],
)
def test_decided_edge_cases(statement: str, normalized: str) -> None:
    assert parse_sql(statement).normalized == normalized


def test_lone_surrogates_do_not_raise() -> None:
    shape = parse_sql("SELECT '\ud800' FROM \udc00t")
    assert shape.normalized == "select ? from \udc00t"
    assert re.fullmatch(r"[0-9a-f]{16}", shape.fingerprint)


# -- properties -----------------------------------------------------------------------------------

SHAPE = "select * from t where a = ?"


def _shape_of_literal(literal: str) -> str:
    return _parse_sql_uncached(f"SELECT * FROM t WHERE a = {literal}").normalized


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_never_raises_on_any_text(text: str) -> None:
    shape = _parse_sql_uncached(text)
    assert isinstance(shape, SqlShape)
    assert re.fullmatch(r"[0-9a-f]{16}", shape.fingerprint)
    assert shape.normalized == shape.normalized.strip()


SQL_ALPHABET = st.sampled_from(
    [
        *"'\"`[]$?%:@#-/*\\;(),.=<>!0123456789 \n\teExXnNaAsSfFtT_",
        "SELECT ",
        "FROM ",
        "WHERE ",
        " IN ",
        "VALUES ",
        "WITH ",
        " AS ",
        "JOIN ",
        "--",
        "/*",
        "*/",
        "$$",
        "$a$",
        "''",
        '""',
        "::",
        "0x",
        "E'",
        "%s",
        "%(n)s",
        ":n",
        "@p",
        "TRUE",
        "NULL",
        "-1",
        "1e5",
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(SQL_ALPHABET, max_size=60).map("".join))
def test_never_raises_on_sql_like_junk(text: str) -> None:
    shape = _parse_sql_uncached(text)
    assert re.fullmatch(r"[0-9a-f]{16}", shape.fingerprint)
    assert shape.operation == shape.operation.upper()
    assert all(t == t.lower() for t in shape.tables)


@given(st.from_regex(r"\A-?[0-9]{1,30}\Z"))
def test_digit_literal_never_survives(literal: str) -> None:
    normalized = _shape_of_literal(literal)
    assert normalized == SHAPE
    assert literal.lstrip("-") not in normalized


@given(st.floats(allow_nan=False, allow_infinity=False).map(repr))
def test_float_literal_never_survives(literal: str) -> None:
    assert _shape_of_literal(literal) == SHAPE


@given(st.text())
def test_single_quoted_literal_never_survives(content: str) -> None:
    literal = "'" + content.replace("\\", "\\\\").replace("'", "''") + "'"
    normalized = _shape_of_literal(literal)
    assert normalized == SHAPE
    assert literal not in normalized


@given(st.text())
def test_escape_string_literal_never_survives(content: str) -> None:
    literal = "E'" + content.replace("\\", "\\\\").replace("'", "\\'") + "'"
    assert _shape_of_literal(literal) == SHAPE


@given(st.text().filter(lambda s: "$" not in s))
def test_dollar_quoted_literal_never_survives(content: str) -> None:
    assert _shape_of_literal(f"$x${content}$x$") == SHAPE
    assert _shape_of_literal(f"$${content}$$") == SHAPE


@given(st.text())
def test_mysql_double_quoted_literal_never_survives(content: str) -> None:
    literal = '"' + content.replace("\\", "\\\\").replace('"', '""') + '"'
    assert _shape_of_literal(literal) == SHAPE


@given(
    st.lists(
        st.one_of(
            st.integers().map(str),
            st.text(max_size=8).map(lambda s: "'" + s.replace("\\", "\\\\").replace("'", "''") + "'"),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_in_list_of_literals_collapses(items: list[str]) -> None:
    normalized = _parse_sql_uncached(f"SELECT * FROM t WHERE a IN ({', '.join(items)}) AND b = 1").normalized
    assert normalized == "select * from t where a in (?) and b = ?"


@given(st.text(alphabet=st.characters(exclude_characters='-/#"`[$')))
def test_string_only_fast_path_matches_the_full_scan(text: str) -> None:
    # Without comment or identifier-quote characters the only tokens are '...' strings, and the
    # callback-free path must give exactly what the full scan gives.
    assert sql._STRING_RE.sub("?", text) == sql._SCAN_RE.sub(sql._replace_token, text)


# -- limits, cache, stability ---------------------------------------------------------------------


def test_ten_megabyte_statement_is_truncated_promptly() -> None:
    statement = "INSERT INTO big (a, b) VALUES " + ", ".join(f"({i}, 'v{i}')" for i in range(700_000))
    assert len(statement) > 10_000_000
    start = time.perf_counter()
    shape = parse_sql(statement)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5
    assert shape.truncated is True
    assert shape.operation == "INSERT"
    assert shape.tables == ("big",)
    assert shape.normalized.startswith("insert into big (a, b) values (?)")
    assert not any(c.isdigit() for c in shape.normalized)
    assert _parse_sql_uncached(statement) == shape


@pytest.mark.parametrize(
    "statement",
    [
        "'" * 10_000_000,
        "/*" + "x" * 10_000_000,
        "$a$" + "$" * 10_000_000,
        "SELECT " + "(" * 5_000_000 + ")" * 5_000_000,
        "SELECT " + "extract(" * 2_000_000,
        "SELECT * FROM t WHERE a IN (" + "?, " * 3_000_000,
        'x = "' + "\\" * 10_000_000,
    ],
    ids=["quotes", "open-comment", "dollars", "parens", "calls", "open-in-list", "backslashes"],
)
def test_pathological_long_input_is_prompt(statement: str) -> None:
    start = time.perf_counter()
    shape = parse_sql(statement)
    assert time.perf_counter() - start < 0.5
    assert shape.truncated is True
    assert len(shape.normalized) <= MAX_STATEMENT_CHARS


def test_truncation_boundary() -> None:
    base = "SELECT * FROM t WHERE a = 1 AND b = "
    exact = base + "x" * (MAX_STATEMENT_CHARS - len(base))
    assert len(exact) == MAX_STATEMENT_CHARS
    assert parse_sql(exact).truncated is False
    longer = parse_sql(exact + "x")
    assert longer.truncated is True
    # No whitespace near the limit: a hard cut, still without the value.
    assert longer.normalized.startswith("select * from t where a = ? and b = xxx")
    assert len(longer.normalized) <= MAX_STATEMENT_CHARS


def test_truncation_cuts_between_tokens() -> None:
    statement = "SELECT col FROM t WHERE " + "alpha_column = 12345 AND " * 1000 + "z = 1"
    shape = parse_sql(statement)
    assert shape.truncated is True
    assert shape.normalized.split()[-1] in {"alpha_column", "=", "?", "and"}
    assert set(shape.normalized.split()) == {
        "select",
        "col",
        "from",
        "t",
        "where",
        "alpha_column",
        "=",
        "?",
        "and",
    }


def test_results_are_cached() -> None:
    statement = "SELECT * FROM cached_table WHERE id = %s"
    assert parse_sql(statement) is parse_sql(statement)


def test_fingerprint_is_pinned() -> None:
    # Fingerprints are stored and compared across deployments: this value must never change.
    shape = parse_sql("SELECT * FROM users WHERE id = 1")
    assert shape.normalized == "select * from users where id = ?"
    assert shape.fingerprint == "ac4d26294fb379a3"


@pytest.mark.parametrize("hash_seed", ["0", "12345"])
def test_fingerprint_is_stable_across_processes(hash_seed: str) -> None:
    statements: list[str] = []
    for case in CASES[:10]:
        statement = case.values[0]  # pytest.param's values are objects to its stubs
        assert isinstance(statement, str)
        statements.append(statement)
    code = (
        "import sys\n"
        "from otel_apm.sql import parse_sql\n"
        "for line in sys.stdin.read().split('\\0'):\n"
        "    print(parse_sql(line).fingerprint)\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run(
        [sys.executable, "-c", code],
        input="\0".join(statements),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert result.stdout.split() == [parse_sql(s).fingerprint for s in statements]


@pytest.mark.parametrize(
    ("statement", "placeholders"),
    [
        ("SELECT * FROM users WHERE id = %s", True),  # psycopg2 / MySQLdb
        ("SELECT * FROM users WHERE id = %(pk_1)s", True),  # pyformat, SQLAlchemy on psycopg2
        ("SELECT * FROM users WHERE id = %b", True),  # psycopg 3 binary
        ("SELECT * FROM users WHERE id = $1", True),  # asyncpg
        ("SELECT * FROM users WHERE id = ?", True),  # sqlite3, JDBC
        ("SELECT * FROM users WHERE id = :id", True),  # named, Oracle
        ("SELECT * FROM users WHERE id = :1", True),  # numeric
        ("SELECT * FROM users WHERE id = @p1", True),  # SQL Server
        ("SELECT * FROM users WHERE name = 'a' AND id = %s", True),  # a string beside it
        ('SELECT "users".id FROM "users" WHERE id = %s -- note', True),  # quotes and comment too
        ("SELECT * FROM users WHERE id = 1", False),
        ("SELECT * FROM users WHERE name = 'it''s %s, :x, $1 or ?'", False),  # all in a string
        ("SELECT * FROM users /* id = %s */ WHERE id = 1", False),  # in a comment
        ("SELECT * FROM users WHERE id = 1 -- :name", False),
        ("SELECT $$ $1 ? $$ FROM users", False),  # dollar-quoted
        ("SELECT id::text FROM users", False),  # a cast
        ("SELECT arr[1:2] FROM users", False),  # an array slice
        ("SELECT @@version", False),  # a system variable
        ("SELECT 7 %% 2", False),  # an escaped percent
        ("SELECT doc ?| array[?] FROM docs", True),  # jsonb ?| is not one, the other ? is
        ("SELECT doc ?| array['a'] FROM docs", False),
        ("SELECT true", False),
    ],
)
def test_placeholders_are_told_from_literals(statement: str, placeholders: bool) -> None:
    """What says whether two runs of one text may carry different values."""
    assert parse_sql(statement).placeholders is placeholders
    assert _parse_sql_uncached(statement).placeholders is placeholders

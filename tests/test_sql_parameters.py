"""SQL built by the project never interpolates data values: values travel as query parameters.

An AST scan of connectors/, flows/, plantpulse/, bench/, grafana/, notify/, models/ and sim/: every call that
hands SQL to a database - the ClickHouse client's query/command/insert methods, sqlite's execute, `run_sql` -
has its SQL argument traced back through the function (local assignments, `+`, f-strings, `%`, `.format`,
`.join`, `.replace`, module constants, loops over the code's own constants). Whatever is spliced into the text
must be a constant, a name traced to those, a call in SAFE_CALLS (quoting, a cast to int), or an entry of
ALLOWED (per file, with its reason: identifiers validated elsewhere, packaged .sql statements, a user's own
ad-hoc query, Grafana's variable interpolation, and the few process-made numbers still to move to parameters).
Anything else - a machine id, an incident id, a string from a message - fails the test with file:line. Insert
methods take the table name only (their rows are data, never text).

Known limit: values that reach SQL through another function's return value are followed only as far as
that function's name (it must be in SAFE_CALLS or the call is flagged), not into its body.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("connectors", "flows", "plantpulse", "bench", "grafana", "notify", "models", "sim")

# Methods that take SQL text as their first argument (ClickHouse client, chDB, sqlite3, DB-API cursors).
SQL_METHODS = frozenset({
    "query", "command", "query_df", "query_arrow", "query_np", "raw_query", "query_rows", "query_arrow_stream",
    "query_df_stream", "query_row_block_stream", "execute", "executemany", "executescript", "sql",
})
# Methods whose first argument is a table name (the rows are passed as data).
INSERT_METHODS = frozenset({"insert", "insert_arrow", "insert_df"})
# Functions of the project that run SQL text given as their argument at this index.
SQL_FUNCTIONS = {"run_sql": 1, "run_panel_sql": 1}

# Calls named like SQL methods that are not databases: receiver source -> what it is.
NOT_SQL_RECEIVERS = {
    "self.book": "flows.incident_logic: IncidentBook.command(action, incident_id, ...) applies an operator command",
    "dash.QueryVariable": "grafana-foundation-sdk builder: .query() sets a dashboard variable's query text",
}
# Names spliced into SQL that the scan cannot see are safe, per file, each with the reason. (Names assigned in
# the same function - `quoted = quote_database(database)` - or bound by a loop over the code's constants -
# `for view in REFRESHABLE_VIEWS` - are followed by the scan and need no entry.)
_PACKAGED = "a statement of a packaged connectors/sql file, `{database}` replaced by the quoted database name"
_OWN_NUMBER = ("a number the process made itself (a clock reading, a window length setting), not data; "
               "still a value: to move to a query parameter (reported in issue 16)")
ALLOWED: dict[tuple[str, str], str] = {
    # Identifiers and whole statements.
    ("connectors/clickhouse_schema.py", "statement"): _PACKAGED,
    ("connectors/clickhouse_access.py", "statement"): _PACKAGED,
    ("connectors/clickhouse_sink.py", "table_name"): "a key of TABLE_SCHEMAS (ClickHouseSinkPartition._check_item)",
    ("connectors/clickhouse.py", "statements[0]"): "run_sql's input split into statements: the `plantpulse sql` user's "
                                               "own query, run as typed (their ClickHouse user's grants apply)",
    ("grafana/snapshot.py", "name"): "a column name of FLEET_VARIABLES (site, line, machine_type)",
    ("plantpulse/cli.py", "query"): "`plantpulse sql QUERY`: the user's own query, run as typed",
    # Grafana's model: dashboard variables are interpolated into the SQL text by Grafana itself (escaped per the
    # variable's format); the snapshot and the benchmark reproduce exactly that with grafana.macros.expand.
    ("bench/dashboard_queries.py", "sql"): "a dashboard query expanded by grafana.macros as Grafana expands it",
    ("grafana/snapshot.py", "expand()"): "a dashboard query expanded by grafana.macros as Grafana expands it",
    # Values, made by the process itself.
    ("bench/e2e.py", "settings.window_seconds * 1000"): _OWN_NUMBER,
    ("bench/e2e.py", "2 * window_ms"): _OWN_NUMBER,
    ("bench/e2e.py", "recording"): "the path of the Parquet recording the benchmark wrote itself, in file(); "
                                   "still a value: to move to a query parameter (reported in issue 16)",
}
SAFE_CALLS = {
    "quote_database": "validates and backtick-quotes a database name",
    "int": "a number cannot carry SQL (used where ClickHouse takes no parameters: REFRESH EVERY n SECOND)",
}


def _functions(tree: ast.Module) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef | ast.Module]:
    yield tree
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


class Scope:
    """Assignments visible to one function: its own, then the module's (constants)."""

    def __init__(self, function: ast.AST, module: ast.Module, filename: str) -> None:
        self.filename = filename
        self.local = self._assignments(function)
        self.module = self._assignments(module, top_level=True)
        self.params = set()
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = function.args
            self.params = {a.arg for a in args.args + args.kwonlyargs + args.posonlyargs}

        self.loops = self._loop_variables(function)

    @staticmethod
    def _assignments(node: ast.AST, top_level: bool = False) -> dict[str, list[ast.expr]]:
        found: dict[str, list[ast.expr]] = {}
        body = node.body if top_level and isinstance(node, ast.Module) else None
        nodes = body if body is not None else list(ast.walk(node))
        for child in nodes:
            if isinstance(child, ast.Assign):
                for target in child.targets:
                    if isinstance(target, ast.Name):
                        found.setdefault(target.id, []).append(child.value)
                    elif isinstance(target, ast.Tuple):
                        # a, b = (x, y) element by element; a, b = (f(m) for m in ...) each gets the element.
                        value = child.value
                        for i, element in enumerate(target.elts):
                            if not isinstance(element, ast.Name):
                                continue
                            if isinstance(value, ast.Tuple) and len(value.elts) == len(target.elts):
                                found.setdefault(element.id, []).append(value.elts[i])
                            elif isinstance(value, (ast.GeneratorExp, ast.ListComp)):
                                found.setdefault(element.id, []).append(value.elt)
            elif isinstance(child, (ast.AnnAssign, ast.AugAssign)) and isinstance(child.target, ast.Name) and child.value:
                found.setdefault(child.target.id, []).append(child.value)
        return found

    @staticmethod
    def _loop_variables(node: ast.AST) -> dict[str, list[ast.expr]]:
        """Names bound by `for` loops and comprehensions -> what they iterate over."""
        found: dict[str, list[ast.expr]] = {}
        for child in ast.walk(node):
            if isinstance(child, (ast.For, ast.comprehension)):
                targets = child.target.elts if isinstance(child.target, ast.Tuple) else [child.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        found.setdefault(target.id, []).append(child.iter)
        return found

    def values(self, name: str) -> list[ast.expr] | None:
        if name in self.local:
            return self.local[name]
        if name not in self.params and name in self.module:
            return self.module[name]
        return None

    def constant_iterable(self, expr: ast.expr, seen: frozenset[str] = frozenset()) -> bool:
        """Whether `expr` iterates over the code's own constants: an UPPER_CASE name (a module constant, e.g. a
        schema or a tuple of column names), a literal list of strings, or a comprehension over those."""
        if isinstance(expr, ast.Name):
            if expr.id.isupper() or expr.id.lstrip("_").isupper():
                return True
            values = [] if expr.id in seen else self.values(expr.id) or []
            return bool(values) and all(self.constant_iterable(v, seen | {expr.id}) for v in values)
        if isinstance(expr, ast.Attribute):
            return expr.attr.isupper()
        if isinstance(expr, (ast.List, ast.Tuple)):  # ("a", "b") or (("a", " FINAL"), ("b", ""))
            return all(isinstance(e, ast.Constant) or (isinstance(e, ast.Tuple)
                                                      and all(isinstance(x, ast.Constant) for x in e.elts))
                       for e in expr.elts)
        if isinstance(expr, (ast.ListComp, ast.GeneratorExp)):
            return all(self.constant_iterable(g.iter, seen) for g in expr.generators)
        return False

    def loop_over_constants(self, name: str) -> bool:
        iterables = self.loops.get(name, [])
        return bool(iterables) and all(self.constant_iterable(i) for i in iterables)


def _violations(expr: ast.expr, scope: Scope, seen: frozenset[str] = frozenset()) -> list[str]:
    """What `expr` (text that becomes SQL) splices in that is not a constant or an allowed identifier."""
    if isinstance(expr, ast.Constant):
        return []
    if isinstance(expr, ast.JoinedStr):
        return [v for part in expr.values if isinstance(part, ast.FormattedValue)
                for v in _spliced(part.value, scope, seen)]
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        return _violations(expr.left, scope, seen) + _violations(expr.right, scope, seen)
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Mod):
        values = expr.right.elts if isinstance(expr.right, ast.Tuple) else [expr.right]
        return _violations(expr.left, scope, seen) + [v for value in values for v in _spliced(value, scope, seen)]
    if isinstance(expr, ast.IfExp):
        return _violations(expr.body, scope, seen) + _violations(expr.orelse, scope, seen)
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
        method, target = expr.func.attr, expr.func.value
        if method == "format":
            inserted = list(expr.args) + [k.value for k in expr.keywords]
            return _violations(target, scope, seen) + [v for value in inserted for v in _spliced(value, scope, seen)]
        if method == "replace" and len(expr.args) == 2:
            return _violations(target, scope, seen) + _spliced(expr.args[1], scope, seen)
        if method == "join" and expr.args:
            parts = expr.args[0]
            if isinstance(parts, (ast.List, ast.Tuple)):
                return [v for e in parts.elts for v in _violations(e, scope, seen)]
            if isinstance(parts, (ast.GeneratorExp, ast.ListComp)):
                return _violations(parts.elt, scope, seen)
            return _spliced(parts, scope, seen)
        if method in ("strip", "rstrip", "lstrip"):
            return _violations(target, scope, seen)
    return _leaf(expr, scope, seen)


def _spliced(expr: ast.expr, scope: Scope, seen: frozenset[str]) -> list[str]:
    """A value put into SQL text: allowed only if it is an identifier, a safe call, or SQL text itself."""
    if isinstance(expr, (ast.JoinedStr, ast.BinOp, ast.IfExp)) or (
            isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute)
            and expr.func.attr in ("format", "join", "replace", "strip", "rstrip", "lstrip")):
        return _violations(expr, scope, seen)
    return _leaf(expr, scope, seen)


def _leaf(expr: ast.expr, scope: Scope, seen: frozenset[str]) -> list[str]:
    """A constant, an allowed or traceable name, or a safe call; anything else is reported as spliced."""
    if isinstance(expr, ast.Constant):
        return []
    if isinstance(expr, ast.Name):
        if (scope.filename, expr.id) in ALLOWED or scope.loop_over_constants(expr.id):
            return []
        values = None if expr.id in seen else scope.values(expr.id)
        if values is not None:
            return [v for value in values for v in _violations(value, scope, seen | {expr.id})]
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in SAFE_CALLS:
        return []
    text = ast.unparse(expr)
    if (scope.filename, text) in ALLOWED:
        return []
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and (scope.filename, f"{expr.func.id}()") in ALLOWED:
        return []
    return [text]


def _sql_argument(call: ast.Call) -> tuple[ast.expr | None, str]:
    func = call.func
    if isinstance(func, ast.Attribute) and ast.unparse(func.value).startswith(tuple(NOT_SQL_RECEIVERS)):
        return None, ""
    if isinstance(func, ast.Attribute) and func.attr in SQL_METHODS | INSERT_METHODS:
        keyword = {"query": "query", "command": "cmd"}.get(func.attr, "table")
        found = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg in (keyword, "sql")), None)
        return found, "table" if func.attr in INSERT_METHODS else "sql"
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    if name in SQL_FUNCTIONS and len(call.args) > SQL_FUNCTIONS[name]:
        return call.args[SQL_FUNCTIONS[name]], "sql"
    return None, ""


def scan_source(source: str, filename: str, calls: list[str] | None = None) -> list[str]:
    """`file:line: call: spliced expression` for every value spliced into SQL text in `source`; the SQL calls
    inspected are appended to `calls` as `file:line`."""
    module = ast.parse(source, filename)
    problems: list[str] = []
    checked: set[int] = set()
    functions = list(_functions(module))
    # Innermost function first, so a call is judged with its own function's assignments.
    for function in sorted(functions, key=lambda f: -getattr(f, "lineno", 0)):
        scope = Scope(function, module, filename)
        for call in (n for n in ast.walk(function) if isinstance(n, ast.Call)):
            if id(call) in checked:
                continue
            argument, kind = _sql_argument(call)
            if argument is None:
                continue
            checked.add(id(call))
            if calls is not None:
                calls.append(f"{filename}:{call.lineno}")
            found = _spliced(argument, scope, frozenset()) if kind == "table" else _violations(argument, scope)
            problems += [f"{filename}:{call.lineno}: {ast.unparse(call.func)}(): {v}" for v in found]
    return problems


def scan_repository(calls: list[str] | None = None) -> list[str]:
    problems: list[str] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            problems += scan_source(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)), calls)
    return problems


def test_the_repository_splices_no_values_into_sql() -> None:
    calls: list[str] = []
    assert scan_repository(calls) == []
    # The scan did look at the code that builds SQL: the schema migrations, the sink's inserts, the access
    # control, the notifier's sqlite ledger, `plantpulse sql`.
    files = {c.split(":")[0] for c in calls}
    assert {"connectors/clickhouse_schema.py", "connectors/clickhouse_sink.py", "connectors/clickhouse_access.py",
            "notify/ledger.py", "connectors/clickhouse.py"} <= files, sorted(files)
    assert len(calls) >= 40, len(calls)


BAD = '''
def ack(client, database, incident_id, who):
    quoted = quote_database(database)
    client.command(f"INSERT INTO {quoted}.incident_acknowledgements VALUES ('{incident_id}', '{who}')")

def by_machine(client, machine_id):
    sql = "SELECT * FROM window_stats WHERE machine_id = '%s'" % machine_id
    return client.query(sql)

def by_site(cursor, site):
    where = "WHERE site = '{}'".format(site)
    cursor.execute("SELECT * FROM machines " + where)

def by_type(client, kinds):
    return client.query_df("SELECT * FROM machines WHERE machine_type IN (" + ", ".join(kinds) + ")")

def by_line(client, line):
    template = "SELECT * FROM machines WHERE line = 'LINE'"
    return client.query(template.replace("LINE", line))

def into(client, name, rows):
    client.insert_arrow(name, rows)
'''

GOOD = '''
REFRESH = ("a_refresh", "b_refresh")

def ack(client, database, incident_id, who):
    quoted = quote_database(database)
    client.command(f"INSERT INTO {quoted}.incident_acknowledgements VALUES ({{i:String}}, {{w:String}})",
                   parameters={"i": incident_id, "w": who})

def refresh(client, database, seconds):
    quoted = quote_database(database)
    for view in REFRESH:
        client.command(f"ALTER TABLE {quoted}.{view} MODIFY REFRESH EVERY {int(seconds)} SECOND")

def by_machine(client, machine_id):
    return client.query("SELECT * FROM window_stats WHERE machine_id = {m:String}", parameters={"m": machine_id})

def into(client, rows, database):
    client.insert_arrow("machines", rows, database=database)
'''


def test_a_value_spliced_into_sql_is_caught() -> None:
    """Positive control: every way of splicing a value in BAD is reported, at its line, naming the value."""
    problems = scan_source(BAD, "bad.py")
    spliced = sorted(p.split(": ", 2)[2] for p in problems)
    assert spliced == sorted(["incident_id", "who", "machine_id", "site", "kinds", "line", "name"])
    assert "bad.py:4: client.command(): incident_id" in problems


def test_parameters_identifiers_and_casts_pass() -> None:
    assert scan_source(GOOD, "good.py") == []


def test_every_allowance_is_used() -> None:
    """An allowance the repository no longer needs is removed rather than left as a loophole: without the
    allowances, each one's expression is reported in its file."""
    saved = dict(ALLOWED)
    ALLOWED.clear()
    try:
        found = {(p.split(":")[0], p.split(": ", 2)[2]) for p in scan_repository()}
    finally:
        ALLOWED.update(saved)
    unused = [key for key in ALLOWED if not any(
        file == key[0] and (text == key[1] or (key[1].endswith("()") and text.startswith(key[1][:-1])))
        for file, text in found)]
    assert unused == []

"""A small jq subset for `payload_jq`: parsed here, translated to SQLite JSON functions.

The mirror keeps each payload as JSON text (rows.py); an expression becomes a
SQL condition over that column, so SQLite evaluates it row by row with bound
parameters. Nothing is ever evaluated by Python's `eval`, and every literal
and path travels as a parameter, never inside the SQL text.

Grammar (precedence from loosest to tightest, as in jq):

    pipe    := or ( "|" or )*
    or      := and ( "or" and )*
    and     := cmp ( "and" cmp )*
    cmp     := primary ( ("==" | "!=" | "<" | "<=" | ">" | ">=") primary )?
    primary := path | literal | "(" pipe ")" | "not" | "length"
             | ("contains" | "startswith" | "endswith") "(" literal ")"
    path    := "." | ("." NAME | "." STRING | "[" INT "]" | "." "[" (INT | STRING) "]")+
    literal := STRING | NUMBER | "-" NUMBER | "true" | "false" | "null" | "[" literal ("," literal)* "]"

`A | B` evaluates B with `.` bound to A, so `.user | .name == "x"` is
`.user.name == "x"` and `.tags | length > 2` counts `.tags`. `not`,
`length` and the three string functions work on `.` like jq's filters.

Semantics follow jq where SQLite can say the same thing: a missing field is
null; null and false are falsy, everything else truthy; values order as
null < false < true < numbers < strings < arrays < objects, and values of
one type compare by value (numbers numerically, strings by code point).
Arrays and objects compare by their compact JSON text, which differs from
jq for objects with keys in another order. Where jq raises an error (e.g.
`startswith` on a number) the job simply does not match. List literals are
only for `contains`.
"""
from __future__ import annotations

import json

from .jq_syntax import Call, JqError, Lit, Node, Path, parse  # noqa: F401 (JqError, parse: API)

_RANKS = {"null": 0, "false": 1, "true": 2, "integer": 3, "real": 3, "text": 4, "array": 5, "object": 6}
_TYPES_OF_RANK = {0: ("null",), 1: ("false",), 2: ("true",), 3: ("integer", "real"), 4: ("text",),
                  5: ("array",), 6: ("object",)}


# ===================================================================== translation

class Params:
    """Named SQL parameters (`:p1`, `:p2`, ...): order-free, never inlined."""

    def __init__(self, prefix: str = "p"):
        self.values: dict = {}
        self.prefix = prefix

    def add(self, value) -> str:
        name = f"{self.prefix}{len(self.values) + 1}"
        self.values[name] = value
        return ":" + name


class At:
    """A place inside the payload (a JSON path)."""

    def __init__(self, steps):
        self.steps = tuple(steps)


class Const:
    def __init__(self, value):
        self.value = value


class Cond:
    """A SQL boolean (never NULL)."""

    def __init__(self, sql):
        self.sql = sql


class Number:
    """A SQL number that may be NULL (jq's null)."""

    def __init__(self, sql):
        self.sql = sql


def json_path(steps, pos: int) -> str:
    out = "$"
    for step in steps:
        if isinstance(step, int):
            out += f"[#{step}]" if step < 0 else f"[{step}]"
        else:
            if '"' in step or "\\" in step:
                raise JqError('keys containing " or \\ are not supported', pos)
            out += f'."{step}"'
    return out


def _const_rank(value) -> int:
    if value is None:
        return 0
    if value is False:
        return 1
    if value is True:
        return 2
    if isinstance(value, (int, float)):
        return 3
    if isinstance(value, str):
        return 4
    return 5 if isinstance(value, list) else 6


def _const_truthy(value) -> bool:
    return value is not None and value is not False


def _const_order(a, b) -> int:
    ra, rb = _const_rank(a), _const_rank(b)
    if ra != rb:
        return -1 if ra < rb else 1
    if ra < 3:
        return 0
    if ra >= 5:
        a, b = _compact(a), _compact(b)
    return (a > b) - (a < b)


def _compact(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Translator:
    def __init__(self, column: str, params: Params):
        self.column = column
        self.params = params

    # --------------------------------------------------------------- pieces
    def jtype(self, at: At, pos: int) -> str:
        return f"json_type({self.column}, {self.params.add(json_path(at.steps, pos))})"

    def jvalue(self, at: At, pos: int) -> str:
        return f"json_extract({self.column}, {self.params.add(json_path(at.steps, pos))})"

    def rank_sql(self, v, pos) -> str:
        if isinstance(v, At):
            cases = " ".join(f"WHEN '{t}' THEN {r}" for t, r in _RANKS.items() if t != "object")
            return f"(CASE COALESCE({self.jtype(v, pos)}, 'null') {cases} ELSE 6 END)"
        if isinstance(v, Cond):
            return f"(CASE WHEN {v.sql} THEN 2 ELSE 1 END)"
        if isinstance(v, Number):
            return f"(CASE WHEN ({v.sql}) IS NULL THEN 0 ELSE 3 END)"
        return str(_const_rank(v.value))

    def value_sql(self, v, pos) -> str:
        if isinstance(v, At):
            return self.jvalue(v, pos)
        if isinstance(v, Number):
            return f"({v.sql})"
        if isinstance(v, Const):
            value = v.value
            if isinstance(value, (list, dict)):
                value = _compact(value)
            elif isinstance(value, bool) or value is None:
                return "NULL"
            return self.params.add(value)
        return "NULL"

    def has_rank(self, v, rank: int, pos) -> str:
        """SQL: v's jq type rank is `rank`."""
        if isinstance(v, At):
            types = _TYPES_OF_RANK[rank]
            inner = ", ".join(f"'{t}'" for t in types)
            return f"COALESCE({self.jtype(v, pos)}, 'null') IN ({inner})"
        return f"{self.rank_sql(v, pos)} = {rank}"

    def truthy(self, v, pos) -> str:
        if isinstance(v, Cond):
            return v.sql
        if isinstance(v, Const):
            return "1" if _const_truthy(v.value) else "0"
        if isinstance(v, Number):
            return f"(({v.sql}) IS NOT NULL)"
        return f"(COALESCE({self.jtype(v, pos)}, 'null') NOT IN ('null', 'false'))"

    # ------------------------------------------------------------ comparisons
    def equal(self, a, b, pos) -> str:
        if isinstance(a, Const) and isinstance(b, Const):
            return "1" if _const_order(a.value, b.value) == 0 else "0"
        if isinstance(a, Const):
            a, b = b, a
        if isinstance(b, Const):
            rank = _const_rank(b.value)
            if rank < 3:
                return f"({self.has_rank(a, rank, pos)})"
            return f"({self.has_rank(a, rank, pos)} AND {self.value_sql(a, pos)} = {self.value_sql(b, pos)})"
        ra, rb = self.rank_sql(a, pos), self.rank_sql(b, pos)
        return (f"(COALESCE({ra} = {rb} AND ({ra} < 3 OR {self.value_sql(a, pos)} = {self.value_sql(b, pos)}), 0))")

    def less(self, a, b, pos) -> str:
        """SQL: a < b in jq's order."""
        if isinstance(a, Const) and isinstance(b, Const):
            return "1" if _const_order(a.value, b.value) < 0 else "0"
        ra, rb = self.rank_sql(a, pos), self.rank_sql(b, pos)
        same = f"({ra} = {rb} AND {ra} >= 3 AND {self.value_sql(a, pos)} < {self.value_sql(b, pos)})"
        return f"(COALESCE({ra} < {rb} OR {same}, 0))"

    def compare(self, op, a, b, pos) -> Cond:
        if op == "==":
            return Cond(self.equal(a, b, pos))
        if op == "!=":
            return Cond(f"(NOT {self.equal(a, b, pos)})")
        if op == "<":
            return Cond(self.less(a, b, pos))
        if op == ">":
            return Cond(self.less(b, a, pos))
        if op == "<=":
            return Cond(f"({self.less(a, b, pos)} OR {self.equal(a, b, pos)})")
        return Cond(f"({self.less(b, a, pos)} OR {self.equal(a, b, pos)})")

    # ---------------------------------------------------------------- filters
    def call(self, node: Call, ctx):
        pos = node.pos
        if node.name == "not":
            if isinstance(ctx, Const):
                return Const(not _const_truthy(ctx.value))
            return Cond(f"(NOT {self.truthy(ctx, pos)})")
        if node.name == "length":
            return self.length(ctx, pos)
        arg = node.arg.value
        if isinstance(ctx, Const):
            return Const(_const_call(node.name, ctx.value, arg))
        if not isinstance(ctx, At):
            raise JqError(f"{node.name}() applies to a payload field here, not to a computed value", pos)
        if node.name == "startswith":
            if arg == "":
                return Cond(f"({self.has_rank(ctx, 4, pos)})")
            p = self.params.add(arg)
            return Cond(f"({self.has_rank(ctx, 4, pos)} AND substr({self.jvalue(ctx, pos)}, 1, length({p})) = {p})")
        if node.name == "endswith":
            if arg == "":
                return Cond(f"({self.has_rank(ctx, 4, pos)})")
            p = self.params.add(arg)
            return Cond(f"({self.has_rank(ctx, 4, pos)} AND substr({self.jvalue(ctx, pos)}, -length({p})) = {p})")
        return Cond(self.contains(ctx, arg, pos))

    def contains(self, ctx: At, arg, pos) -> str:
        if isinstance(arg, str):
            return f"({self.has_rank(ctx, 4, pos)} AND instr({self.jvalue(ctx, pos)}, {self.params.add(arg)}) > 0)"
        if isinstance(arg, list):
            parts = [self.has_rank(ctx, 5, pos)]
            for item in arg:
                if isinstance(item, (list, dict)):
                    raise JqError("contains() takes a list of scalars in this subset", pos)
                path = self.params.add(json_path(ctx.steps, pos))
                parts.append(f"EXISTS (SELECT 1 FROM json_each({self.column}, {path}) AS e WHERE "
                             f"{self.element_matches(item)})")
            return "(" + " AND ".join(parts) + ")"
        if isinstance(arg, dict):
            raise JqError("contains() with an object is not supported", pos)
        return self.equal(ctx, Const(arg), pos)

    def element_matches(self, item) -> str:
        if isinstance(item, str):
            return f"e.type = 'text' AND instr(e.value, {self.params.add(item)}) > 0"
        if item is None:
            return "e.type = 'null'"
        if isinstance(item, bool):
            return f"e.type = '{'true' if item else 'false'}'"
        return f"e.type IN ('integer', 'real') AND e.value = {self.params.add(item)}"

    def length(self, ctx, pos):
        if isinstance(ctx, Const):
            return Const(_const_length(ctx.value, pos))
        if isinstance(ctx, Number):
            return Number(f"abs({ctx.sql})")
        if isinstance(ctx, Cond):
            raise JqError("a boolean has no length", pos)
        t = f"COALESCE({self.jtype(ctx, pos)}, 'null')"
        v = self.jvalue(ctx, pos)
        arr = f"json_array_length({self.column}, {self.params.add(json_path(ctx.steps, pos))})"
        obj = f"(SELECT count(*) FROM json_each({self.column}, {self.params.add(json_path(ctx.steps, pos))}))"
        return Number(f"CASE {t} WHEN 'text' THEN length({v}) WHEN 'array' THEN {arr} WHEN 'object' THEN {obj} "
                      f"WHEN 'integer' THEN abs({v}) WHEN 'real' THEN abs({v}) WHEN 'null' THEN 0 ELSE NULL END")

    # ------------------------------------------------------------------ nodes
    def eval(self, node: Node, ctx):
        if isinstance(node, Lit):
            return Const(node.value)
        if isinstance(node, Path):
            if not node.steps:
                return ctx
            if isinstance(ctx, At):
                return At(ctx.steps + node.steps)
            if isinstance(ctx, Const) and ctx.value is None:
                return ctx  # null.x is null in jq
            raise JqError("a field path applies to the payload here, not to a computed value", node.pos)
        if isinstance(node, Call):
            return self.call(node, ctx)
        op = node.op
        if op == "|":
            return self.eval(node.right, self.eval(node.left, ctx))
        left, right = self.eval(node.left, ctx), self.eval(node.right, ctx)
        if op in ("and", "or"):
            if isinstance(left, Const) and isinstance(right, Const):
                a, b = _const_truthy(left.value), _const_truthy(right.value)
                return Const(a and b if op == "and" else a or b)
            joiner = " AND " if op == "and" else " OR "
            return Cond(f"({self.truthy(left, node.pos)}{joiner}{self.truthy(right, node.pos)})")
        if isinstance(left, Const) and isinstance(right, Const):
            c = _const_order(left.value, right.value)
            return Const({"==": c == 0, "!=": c != 0, "<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0}[op])
        if any(isinstance(v, Const) and isinstance(v.value, (list, dict)) for v in (left, right)):
            raise JqError("list literals are only for contains()", node.pos)
        return self.compare(op, left, right, node.pos)


def _const_length(value, pos):
    if value is None:
        return 0
    if isinstance(value, bool):
        raise JqError("a boolean has no length", pos)
    if isinstance(value, (int, float)):
        return abs(value)
    return len(value)


def _const_call(name, value, arg):
    if name == "startswith":
        return isinstance(value, str) and value.startswith(arg)
    if name == "endswith":
        return isinstance(value, str) and value.endswith(arg)
    if isinstance(arg, str):
        return isinstance(value, str) and arg in value
    if isinstance(arg, list):
        return isinstance(value, list) and all(
            any((isinstance(v, str) and isinstance(a, str) and a in v) or (_const_order(v, a) == 0 and
                                                                       _const_rank(v) == _const_rank(a))
                for v in value) for a in arg)
    return _const_order(value, arg) == 0


def to_sql(text: str, column: str, params: Params) -> str:
    """SQL condition (named parameters added to `params`) true where `text` is truthy for the payload.

    Raises JqError.
    """
    tree = parse(text)
    tr = Translator(column, params)
    result = tr.eval(tree, At(()))
    return tr.truthy(result, 0)

"""The jq subset's tokens, syntax tree and parser (the grammar is in jq.py's docstring).

The recursive descent is bounded (DEPTH_MAX levels of parentheses, OPERATORS_MAX
operators), so a hostile expression ends in a JqError, never a RecursionError
here or an expression-depth error in SQLite.
"""
from __future__ import annotations

import json
import re

#: Keywords and filters of the subset, for error messages.
FUNCTIONS = ("not", "length", "contains", "startswith", "endswith")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_CMP = ("==", "!=", "<=", ">=", "<", ">")
#: Deepest nesting of parentheses and operators the parser accepts (no recursion blow-up).
DEPTH_MAX = 32
#: Operators (| or and == ...) in one expression at most.
OPERATORS_MAX = 128


class JqError(ValueError):
    """The expression cannot be parsed or translated; `position` is a 0-based character offset."""

    def __init__(self, message: str, position: int):
        super().__init__(message)
        self.message = message
        self.position = position


# ===================================================================== tokens

class Token:
    __slots__ = ("kind", "value", "pos")

    def __init__(self, kind, value, pos):
        self.kind = kind  # op | name | str | num | end
        self.value = value
        self.pos = pos

    def __repr__(self):
        return f"Token({self.kind}, {self.value!r}, {self.pos})"


def tokenize(text: str) -> list[Token]:
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
            continue
        if text.startswith(("==", "!=", "<=", ">="), i):
            out.append(Token("op", text[i:i + 2], i))
            i += 2
            continue
        if c in "<>|()[],-":
            out.append(Token("op", c, i))
            i += 1
            continue
        if c == ".":
            out.append(Token("op", ".", i))
            i += 1
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                if text[j] == "\\":
                    if j + 1 < n and text[j + 1] == "(":
                        raise JqError("string interpolation \\( is not supported", j)
                    j += 1
                j += 1
            if j >= n:
                raise JqError("unterminated string", i)
            try:
                value = json.loads(text[i:j + 1])
            except ValueError:
                raise JqError("invalid escape in string", i)
            out.append(Token("str", value, i))
            i = j + 1
            continue
        if c.isdigit():
            m = _NUMBER.match(text, i)
            out.append(Token("num", _number(m.group(0)), i))
            i = m.end()
            continue
        m = _NAME.match(text, i)
        if m:
            out.append(Token("name", m.group(0), i))
            i = m.end()
            continue
        raise JqError(f"unexpected character {c!r}", i)
    out.append(Token("end", None, n))
    return out


def _number(text: str):
    if re.fullmatch(r"[0-9]+", text):
        value = int(text)
        return value if value < 2**63 else float(value)
    return float(text)


# ===================================================================== syntax tree

class Node:
    __slots__ = ("pos",)


class Path(Node):
    __slots__ = ("steps",)

    def __init__(self, steps, pos):
        self.steps, self.pos = tuple(steps), pos


class Lit(Node):
    __slots__ = ("value",)

    def __init__(self, value, pos):
        self.value, self.pos = value, pos


class Binary(Node):
    __slots__ = ("op", "left", "right")

    def __init__(self, op, left, right, pos):
        self.op, self.left, self.right, self.pos = op, left, right, pos


class Call(Node):
    __slots__ = ("name", "arg")

    def __init__(self, name, arg, pos):
        self.name, self.arg, self.pos = name, arg, pos


class Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0
        self.operators = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        t = self.tokens[self.i]
        self.i += 1
        return t

    def at(self, kind, value=None) -> bool:
        t = self.tok
        return t.kind == kind and (value is None or t.value == value)

    def expect_op(self, value):
        if not self.at("op", value):
            raise JqError(f"expected {value!r}, found {self.describe(self.tok)}", self.tok.pos)
        return self.take()

    @staticmethod
    def describe(t: Token) -> str:
        return "end of expression" if t.kind == "end" else repr(t.value)

    def parse(self) -> Node:
        if self.at("end"):
            raise JqError("empty expression", 0)
        node = self.pipe()
        if not self.at("end"):
            raise JqError(f"unexpected {self.describe(self.tok)}", self.tok.pos)
        return node

    def operator(self, t: Token) -> int:
        self.operators += 1
        if self.operators > OPERATORS_MAX:
            raise JqError(f"expression has more than {OPERATORS_MAX} operators", t.pos)
        return t.pos

    def nest(self):
        self.depth += 1
        if self.depth > DEPTH_MAX:
            raise JqError(f"expression nests deeper than {DEPTH_MAX} levels", self.tok.pos)

    def pipe(self) -> Node:
        self.nest()
        node = self.or_()
        while self.at("op", "|"):
            pos = self.operator(self.take())
            node = Binary("|", node, self.or_(), pos)
        self.depth -= 1
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.at("name", "or"):
            pos = self.operator(self.take())
            node = Binary("or", node, self.and_(), pos)
        return node

    def and_(self) -> Node:
        node = self.cmp()
        while self.at("name", "and"):
            pos = self.operator(self.take())
            node = Binary("and", node, self.cmp(), pos)
        return node

    def cmp(self) -> Node:
        node = self.primary()
        if self.tok.kind == "op" and self.tok.value in _CMP:
            t = self.take()
            node = Binary(t.value, node, self.primary(), self.operator(t))
            if self.tok.kind == "op" and self.tok.value in _CMP:
                raise JqError("comparisons do not chain; use parentheses and `and`", self.tok.pos)
        return node

    def primary(self) -> Node:
        t = self.tok
        if t.kind == "op" and t.value == ".":
            return self.path()
        if t.kind == "op" and t.value == "(":
            self.take()
            node = self.pipe()
            self.expect_op(")")
            return node
        if t.kind in ("str", "num") or (t.kind == "op" and t.value in ("-", "[")) or \
                (t.kind == "name" and t.value in ("true", "false", "null")):
            return Lit(self.literal(), t.pos)
        if t.kind == "name":
            self.take()
            if t.value in ("not", "length"):
                nxt = self.tok
                if nxt.kind in ("str", "num") or (nxt.kind == "op" and nxt.value in (".", "(")):
                    raise JqError(f"{t.value} is a filter in jq: write `EXPR | {t.value}`", t.pos)
                return Call(t.value, None, t.pos)
            if t.value in ("contains", "startswith", "endswith"):
                self.expect_op("(")
                arg_pos = self.tok.pos
                if not (self.tok.kind in ("str", "num") or (self.tok.kind == "op" and self.tok.value in ("-", "["))
                        or (self.tok.kind == "name" and self.tok.value in ("true", "false", "null"))):
                    raise JqError(f"{t.value}() takes a literal argument in this subset", arg_pos)
                arg = Lit(self.literal(), arg_pos)
                self.expect_op(")")
                if t.value != "contains" and not isinstance(arg.value, str):
                    raise JqError(f"{t.value}() takes a string", arg_pos)
                return Call(t.value, arg, t.pos)
            if t.value in ("and", "or"):
                raise JqError(f"{t.value!r} needs a value on its left", t.pos)
            raise JqError(f"unsupported function {t.value!r} (supported: {', '.join(FUNCTIONS)})", t.pos)
        raise JqError(f"unexpected {self.describe(t)}", t.pos)

    def literal(self, in_list: bool = False):
        t = self.take()
        if t.kind == "str":
            return t.value
        if t.kind == "num":
            return t.value
        if t.kind == "op" and t.value == "-":
            n = self.take()
            if n.kind != "num":
                raise JqError("unary minus works on number literals only", t.pos)
            return -n.value
        if t.kind == "name" and t.value in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[t.value]
        if t.kind == "op" and t.value == "[" and not in_list:
            items = []
            if self.at("op", "]"):
                self.take()
                return items
            while True:
                items.append(self.literal(in_list=True))
                if self.at("op", ","):
                    self.take()
                    continue
                self.expect_op("]")
                return items
        raise JqError(f"expected a literal, found {self.describe(t)}", t.pos)

    def path(self) -> Path:
        start = self.tok.pos
        steps = []
        self.expect_op(".")
        # the first step may follow the dot directly: .name, ."name", .[0]
        if self.at("name") and self.tok.pos == start + 1:
            steps.append(self.take().value)
        elif self.at("str") and self.tok.pos == start + 1:
            steps.append(self.take().value)
        while True:
            if self.at("op", "["):
                steps.append(self.index())
            elif self.at("op", ".") and self.tokens[self.i + 1].pos == self.tok.pos + 1 and \
                    self.tokens[self.i + 1].kind in ("name", "str"):
                self.take()
                steps.append(self.take().value)
            elif self.at("op", ".") and self.tokens[self.i + 1].kind == "op" and self.tokens[self.i + 1].value == "[":
                self.take()
            else:
                break
        return Path(steps, start)

    def index(self):
        open_pos = self.expect_op("[").pos
        t = self.take()
        if t.kind == "op" and t.value == "]":
            raise JqError("iteration .[] is not supported", open_pos)
        if t.kind == "op" and t.value == "-" and self.at("num"):
            n = self.take()
            value = -n.value
        elif t.kind in ("num", "str"):
            value = t.value
        else:
            raise JqError(f"expected an index or a key, found {self.describe(t)}", t.pos)
        if isinstance(value, float):
            raise JqError("array indexes are integers", t.pos)
        self.expect_op("]")
        return value


def parse(text: str) -> Node:
    """Raises JqError with the offending position."""
    return Parser(text).parse()

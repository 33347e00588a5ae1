"""The building blocks of the ONNX → PyTorch converter: values, the fx graph builder, the
operator table.

Every ONNX tensor becomes one of three values while the graph is built:

- ``Tensor``: computed at run time by a node of the ``torch.fx`` graph;
- ``Const``: known now (an initializer, a ``Constant``, or folded from constants);
- ``ShapeVal``: a list of numbers where some are read from tensors at run time, as
  ``Shape → Gather → Unsqueeze → Concat`` chains compute them. Keeping the numbers symbolic
  (``x.size(0)``, not the example's ``1``) is what makes the module work after pruning
  changes channel counts, and lets ``Reshape(x, [x.size(0), -1])`` become ``flatten``.

Each emitted node is also run at once on an example input, so a handler can read the shapes
it needs (``.val``) without shape inference. Nothing from the ONNX file is executed: op types
are looked up in ``OPS``; the names that reach the generated code are reduced to
``[A-Za-z0-9_]``; strings from the file are never placed in it.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from hadmc_core.errors import UnsupportedOperatorError


@dataclass
class Sym:
    """A Python number computed at run time (a dimension, or arithmetic on dimensions)."""

    node: fx.Node
    val: int | float
    dim: int | None = None  # i when this is tensor.size(i)


@dataclass
class Tensor:
    node: fx.Node
    val: Any  # torch.Tensor, or a tuple of them (torch.split)


@dataclass
class Const:
    val: torch.Tensor


@dataclass
class ShapeVal:
    """A 1-D (or, when ``scalar``, 0-D) integer or float tensor with symbolic items."""

    items: list[int | float | Sym]
    scalar: bool = False
    floating: bool = False


Value = Tensor | Const | ShapeVal
Item = int | float | Sym


def shape_or_const(items: list[Item], scalar: bool = False, floating: bool = False) -> Value:
    """A ShapeVal, or a Const when no item is symbolic any more."""
    if any(isinstance(i, Sym) for i in items):
        return ShapeVal(list(items), scalar, floating)
    dtype = torch.float32 if floating else torch.int64
    t = torch.tensor(items, dtype=dtype)
    return Const(t.reshape(()) if scalar else t)


@dataclass
class Node:
    """One ONNX node as a handler sees it."""

    op: str
    name: str
    inputs: list[Value | None]
    attrs: dict[str, Any]
    outputs: int
    opset: int
    scope: list[str] = field(default_factory=list)  # module path parts, sanitized
    extra: dict[str, Any] = field(default_factory=dict)

    def input(self, i: int) -> Value | None:
        return self.inputs[i] if i < len(self.inputs) else None

    def required(self, i: int, what: str) -> Value:
        """Input ``i``; unsupported when the node leaves it out."""
        v = self.input(i)
        if v is None:
            raise self.unsupported(f"input {i} ({what}) is missing")
        return v

    def unsupported(self, detail: str) -> UnsupportedOperatorError:
        return UnsupportedOperatorError(self.op, self.name, detail)

    def const(self, i: int, what: str) -> torch.Tensor | None:
        """Input ``i`` as a constant tensor (None when absent); unsupported when computed."""
        v = self.input(i)
        if v is None:
            return None
        if isinstance(v, Const):
            return v.val
        if isinstance(v, ShapeVal) and not any(isinstance(x, Sym) for x in v.items):
            return torch.tensor(v.items)
        raise self.unsupported(f"{what} must be a constant, not computed in the graph")

    def required_const(self, i: int, what: str) -> torch.Tensor:
        """Input ``i`` as a constant tensor; unsupported when absent or computed."""
        t = self.const(i, what)
        if t is None:
            raise self.unsupported(f"input {i} ({what}) is missing")
        return t

    def ints(self, i: int, what: str) -> list[int] | None:
        t = self.const(i, what)
        return None if t is None else [int(x) for x in t.reshape(-1).tolist()]

    def required_ints(self, i: int, what: str) -> list[int]:
        return [int(x) for x in self.required_const(i, what).reshape(-1).tolist()]


Handler = Callable[["Builder", Node], "Value | list[Value | None]"]
OPS: dict[str, Handler] = {}


def op(*names: str) -> Callable[[Handler], Handler]:
    """Register a handler for ONNX operator types of the default domain."""

    def deco(fn: Handler) -> Handler:
        for name in names:
            OPS[name] = fn
        return fn

    return deco


_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_RESERVED: set[str] | None = None


def _reserved() -> set[str]:
    global _RESERVED
    if _RESERVED is None:
        _RESERVED = set(dir(fx.GraphModule(nn.Module(), fx.Graph()))) | {"forward", "code"}
    return _RESERVED


def safe_component(text: str) -> str:
    """An attribute name made of [A-Za-z0-9_] that shadows nothing on a module."""
    s = _UNSAFE.sub("_", text).strip("_") or "m"
    if s.startswith("_"):
        s = "m" + s
    if keyword.iskeyword(s) or s in _reserved():
        s += "_"
    return s


_DOTTED = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
_QUOTED = re.compile(r"'([^'\\]*)'")


def _parts(path: str) -> list[str]:
    return [safe_component(p) for p in path.split(".") if _UNSAFE.sub("", p)]


def scope_path(node_name: str, weight: str | None = None,
               name_scopes: str | None = None) -> list[str]:
    """Module path parts for a node with weights, from what exporters leave in the file.

    In order: the weight's initializer name (``features.0.weight`` → ``features.0``), the
    ``pkg.torch.onnx.name_scopes`` metadata of torch's dynamo exporter (its next-to-last
    scope), the node name of torch's TorchScript exporter (``/layer1/layer1.0/conv1/Conv``
    → ``layer1.0.conv1``: each scope segment ends with the child's name), the node name.
    """
    if weight and weight.endswith(".weight") and _DOTTED.fullmatch(weight[:-7]):
        return _parts(weight[:-7])
    scopes = _QUOTED.findall(name_scopes or "")
    if len(scopes) >= 2 and _DOTTED.fullmatch(scopes[-2]):
        return _parts(scopes[-2])
    if "/" in node_name:
        segs = [s for s in node_name.split("/") if s]
        segs = segs[:-1] if len(segs) > 1 else segs
        return [safe_component(s.rsplit(".", 1)[-1]) for s in segs if _UNSAFE.sub("", s)]
    return _parts(node_name)


class Namer:
    """Unique module paths; a path never passes through another module's leaf."""

    def __init__(self) -> None:
        self.leaves: set[str] = set()
        self.inner: set[str] = set()

    def _free(self, parts: list[str]) -> bool:
        path = ".".join(parts)
        prefixes = {".".join(parts[:i]) for i in range(1, len(parts))}
        return path not in self.leaves and path not in self.inner \
            and not (prefixes & self.leaves)

    def take(self, parts: list[str], op: str) -> str:
        flat = "_".join(parts) if parts else op.lower()
        candidates = [parts, [*parts[:-1], f"{parts[-1]}_{op.lower()}"]] if parts else []
        candidates.append([flat])
        k = 1
        while True:
            for cand in candidates:
                if self._free(cand):
                    self.leaves.add(".".join(cand))
                    self.inner.update(".".join(cand[:i]) for i in range(1, len(cand)))
                    return ".".join(cand)
            candidates = [[f"{flat}_{k}"]]
            k += 1


class Builder:
    """Builds the fx graph and runs every node on the example input as it goes."""

    def __init__(self) -> None:
        self.graph = fx.Graph()
        self.attrs: dict[str, nn.Module | torch.Tensor] = {}
        self.onnx_nodes: dict[str, str] = {}
        self.names = Namer()
        self._consts: dict[int, fx.Node] = {}

    # mapping of values to fx arguments and to example values
    def arg(self, a: Any) -> Any:
        if isinstance(a, Tensor | Sym):
            return a.node
        if isinstance(a, Const):
            return self.const_node(a.val)
        if isinstance(a, ShapeVal):
            items = [self.arg(i) for i in a.items]
            return items[0] if a.scalar else items
        if isinstance(a, list | tuple):
            return type(a)(self.arg(x) for x in a)
        if isinstance(a, slice):
            return slice(self.arg(a.start), self.arg(a.stop), self.arg(a.step))
        if isinstance(a, dict):
            return {k: self.arg(v) for k, v in a.items()}
        return a

    def val(self, a: Any) -> Any:
        if isinstance(a, Tensor | Sym | Const):
            return a.val
        if isinstance(a, ShapeVal):
            items = [self.val(i) for i in a.items]
            return items[0] if a.scalar else items
        if isinstance(a, list | tuple):
            return type(a)(self.val(x) for x in a)
        if isinstance(a, slice):
            return slice(self.val(a.start), self.val(a.stop), self.val(a.step))
        if isinstance(a, dict):
            return {k: self.val(v) for k, v in a.items()}
        return a

    def dynamic(self, a: Any) -> bool:
        if isinstance(a, Tensor | Sym):
            return True
        if isinstance(a, ShapeVal):
            return any(isinstance(i, Sym) for i in a.items)
        if isinstance(a, list | tuple):
            return any(self.dynamic(x) for x in a)
        if isinstance(a, slice):
            return any(self.dynamic(x) for x in (a.start, a.stop, a.step))
        if isinstance(a, dict):
            return any(self.dynamic(x) for x in a.values())
        return False

    def const_node(self, t: torch.Tensor) -> fx.Node:
        if id(t) not in self._consts:
            name = self.names.take([f"const_{len(self._consts)}"], "const")
            self.attrs[name] = t
            self._consts[id(t)] = self.graph.get_attr(name)
        return self._consts[id(t)]

    # emitting
    def placeholder(self, name: str, example: torch.Tensor) -> Tensor:
        return Tensor(self.graph.placeholder(safe_component(name)), example)

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Tensor | Const:
        """``fn(*args)``: folded now when every argument is constant, else a graph node."""
        out = fn(*self.val(args), **self.val(kwargs))
        if not self.dynamic((args, kwargs)):
            return Const(out)
        return Tensor(self.graph.call_function(fn, self.arg(args), self.arg(kwargs)), out)

    def method(self, name: str, x: Value, *args: Any) -> Tensor | Const:
        out = getattr(self.val(x), name)(*self.val(args))
        if not self.dynamic((x, args)):
            return Const(out)
        return Tensor(self.graph.call_method(name, (self.arg(x), *self.arg(args))), out)

    def module(self, mod: nn.Module, node: Node, *args: Value) -> Tensor:
        """Attach ``mod`` under a path taken from the ONNX node name and call it."""
        path = self.names.take(node.scope, node.op)
        mod.eval()
        self.attrs[path] = mod
        self.onnx_nodes[path] = node.name
        out = mod(*self.val(args))
        return Tensor(self.graph.call_module(path, self.arg(args)), out)

    def size(self, x: Tensor, i: int) -> Sym:
        return Sym(self.graph.call_method("size", (x.node, i)), x.val.shape[i], dim=i)

    def sym(self, fn: Callable, *args: Item) -> Item:
        """Arithmetic on shape items: a number now, or a run-time node when symbolic."""
        out = fn(*(self.val(a) for a in args))
        if not any(isinstance(a, Sym) for a in args):
            return out
        return Sym(self.graph.call_function(fn, tuple(self.arg(a) for a in args)), out)

    def to_tensor(self, v: Value) -> Tensor | Const:
        """A ShapeVal as a run-time tensor (for operators outside shape arithmetic)."""
        if isinstance(v, ShapeVal):
            dtype = torch.float32 if v.floating else torch.int64
            return self.call(torch.tensor, v, dtype=dtype)
        return v

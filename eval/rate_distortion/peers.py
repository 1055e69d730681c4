"""Peers side by side on the benchmark's K/V: other packages' quantizers (their own encode/decode,
their own stored tensors counted), the HyperQuant-style lattice peer and ours, with CPU times."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from octopus_diffusers.codecs import CodecError, get_codec

from .datasets import RDDataset
from .metrics import attention_relative_error, relative_mse

#: Steps of the lattice peer (in units of the rotated unit vector's coordinates) measured per head_dim;
#: they span about 1.5 to 5 bits per scalar at d = 32..128.
#: Datasets the peers table runs on (the real K/V and the uniform reference).
PEER_DATASETS = ("minilm", "unit")
LATTICE_STEPS = (0.18, 0.12, 0.08, 0.055, 0.04, 0.028, 0.02, 0.014)


@dataclass
class Peer:
    """One peer configuration: how to encode a ``(N, d)`` tensor, decode it, and count its bytes."""

    label: str
    config: str
    source: str
    encode: Any
    decode: Any
    nbytes: Any


def _package_peer(name: str, head_dim: int, bits: float, seed: int, **options: Any) -> Peer:
    codec = get_codec(name, head_dim, bits, seed=seed, **options)
    return Peer(name, f"bits={bits:g}" + "".join(f", {k}={v}" for k, v in options.items()),
                "octopus-diffusers", codec.encode, codec.decode, lambda p: p.nbytes)


def external_peers(head_dim: int, seed: int) -> tuple[list[Peer], list[dict]]:
    """Peers from other packages that run on the CPU here (their own encode/decode, their own
    stored tensors counted), and the notes of those that do not."""
    peers, notes = [], []
    try:
        from fused_turboquant.core.quantizer import TurboQuantMSE
    except ImportError as err:
        notes.append({"peer": "fused-turboquant", "status": f"not importable: {err}"})
    else:
        for b in (2, 3, 4):
            try:
                q = TurboQuantMSE(head_dim, b, seed=seed, device="cpu")
            except ValueError as err:
                notes.append({"peer": "fused-turboquant", "status": f"bits={b}, d={head_dim}: {err}"})
                continue
            peers.append(Peer("fused-turboquant", f"bits={b} (fp32 norm)", "fused-turboquant 0.1.0",
                              q.encode, lambda c, q=q: q.decode(c),
                              lambda c: c.indices.numel() * c.indices.element_size()
                              + c.norms.numel() * c.norms.element_size()))
    try:
        from polarengine_vllm.kv_cache.cache import PolarKVQuantizer
    except ImportError as err:
        notes.append({"peer": "polarquant", "status": f"not importable: {err}"})
    else:
        for b in (2, 3, 4):
            try:
                q = PolarKVQuantizer(head_dim, b, device="cpu")
            except (ValueError, AssertionError) as err:
                notes.append({"peer": "polarquant", "status": f"nbits={b}, d={head_dim}: {err}"})
                continue
            peers.append(Peer("polarquant (PolarKVQuantizer)", f"nbits={b} (bf16 norm)", "polarquant 0.6.0",
                              lambda x, q=q: (q.quantize(x), x.shape),
                              lambda e, q=q: q.dequantize(e[0][0], e[0][1], e[1]).float(),
                              lambda e: e[0][0].numel() * e[0][0].element_size()
                              + e[0][1].numel() * e[0][1].element_size()))
    return peers, notes


def lattice_peers(head_dim: int, seed: int) -> list[Peer]:
    """The HyperQuant-style lattice peer (:mod:`octopus_diffusers.codecs.lattice_rice`) at every step."""
    from octopus_diffusers.codecs.lattice_rice import LATTICES, LatticeRiceQuantizer

    out = []
    for lattice in LATTICES:
        if head_dim % LATTICES[lattice]:
            continue
        for step in LATTICE_STEPS:
            q = LatticeRiceQuantizer(head_dim, step, lattice, seed)
            out.append(Peer(f"lattice-{lattice}-rice", f"step={step:g}", "octopus-diffusers (HyperQuant-style)",
                            q.encode, q.decode, lambda e: e.bits / 8))
    return out


def _time_peer(peer: Peer, x: torch.Tensor) -> tuple[torch.Tensor, float, float, float]:
    """(decoded float32 of x's shape, stored bytes, encode seconds, decode seconds) on the CPU."""
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    t0 = time.perf_counter()
    enc = peer.encode(flat)
    t1 = time.perf_counter()
    dec = peer.decode(enc)
    t2 = time.perf_counter()
    return dec.float().reshape(x.shape), float(peer.nbytes(enc)), t1 - t0, t2 - t1


def peer_comparison(datasets: Sequence[RDDataset], seed: int, external: bool = True
                    ) -> tuple[list[dict], list[dict]]:
    """Every peer on the same K and V of each dataset (CPU): stored bytes, true rate, relative MSE,
    attention-output error and encode/decode seconds, and ``triplet_vq`` at a true rate not above the
    peer's (its distortion ratio, < 1: ``triplet_vq`` wins). ``external=False`` leaves out the other
    packages' peers."""
    rows, notes = [], []
    for ds in datasets:
        d = ds.head_dim
        ext, ext_notes = external_peers(d, seed) if external else ([], [])
        notes += [{**n, "dataset": ds.label} for n in ext_notes]
        ours = []
        for bits in (2, 3, 4):
            ours.append(_package_peer("turboquant", d, bits, seed))
            ours.append(_package_peer("octopus", d, bits, seed))
        for bits in (2.0, 2.5, 3.0, 3.5, 4.0):
            ours += [_package_peer("triplet_vq", d, bits, seed), _package_peer("turboquant_mr", d, bits, seed)]
        for peer in tqdm(ours + ext + lattice_peers(d, seed), desc=f"peers {ds.label}", unit="cfg", leave=False):
            k_hat, k_bytes, k_enc, k_dec = _time_peer(peer, ds.keys)
            v_hat, v_bytes, v_enc, v_dec = _time_peer(peer, ds.values)
            rate = 8 * (k_bytes + v_bytes) / (ds.keys.numel() + ds.values.numel())
            row = {"dataset": ds.label, "head_dim": d, "peer": peer.label, "config": peer.config,
                   "source": peer.source, "bytes": k_bytes + v_bytes, "bits_per_scalar": rate,
                   "distortion": (relative_mse(ds.keys, k_hat) + relative_mse(ds.values, v_hat)) / 2,
                   "attn_rel_err": attention_relative_error(ds.attn_q, ds.attn_k, ds.attn_v, k_hat, v_hat),
                   "encode_s": k_enc + v_enc, "decode_s": k_dec + v_dec,
                   "vectors": int((ds.keys.numel() + ds.values.numel()) // d)}
            try:
                vq = get_codec("triplet_vq", d, rate, seed=seed)
                vk, vv = vq.roundtrip(ds.keys.float()), vq.roundtrip(ds.values.float())
                vq_dist = (relative_mse(ds.keys, vk) + relative_mse(ds.values, vv)) / 2
                row.update({"triplet_vq_bits": vq.bits_per_scalar, "triplet_vq_distortion": vq_dist,
                            "ratio_triplet_vq_vs_peer": vq_dist / row["distortion"]})
            except CodecError as err:
                row.update({"triplet_vq_bits": None, "triplet_vq_distortion": None,
                            "ratio_triplet_vq_vs_peer": None, "triplet_vq_refused": str(err)})
            rows.append(row)
    return rows, notes

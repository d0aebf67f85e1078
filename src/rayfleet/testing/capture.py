"""Secrets on the wire: capture a bridge with tcpdump, then look for given byte strings in every TCP
stream (reassembled in sequence order, so a secret split across segments is still found).

A header value (a token) must be searched as its raw bytes and as HPACK Huffman codes (HTTP/2 and
gRPC may send a header value Huffman-coded: ``Bearer <token>`` would not show as text): ``forms``.

    with Capture("rfhbr0", path, "not tcp port 22") as cap:
        ...
    report = search(path, {"token": forms(b"Bearer abc...")})

The pcap is read here (classic format, Ethernet/IPv4/TCP) rather than with scapy: the multihost module's
capture is ~2 GB, which scapy takes minutes to dissect; this reads and searches it in ~10 s.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Capture", "Found", "Report", "forms", "search"]


class Capture:
    """tcpdump on ``interface`` into ``path`` (a pcap), from ``__enter__`` until ``stop``/``__exit__``."""

    def __init__(self, interface: str, path: Path, bpf: str = "", snaplen: int = 0):
        self.interface, self.path, self.bpf, self.snaplen = interface, Path(path), bpf, snaplen
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Capture":
        args = ["tcpdump", "-i", self.interface, "-n", "-U", "--immediate-mode", "-s", str(self.snaplen), "-w", str(self.path)]
        self.proc = subprocess.Popen(args + ([self.bpf] if self.bpf else []), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while not (self.path.exists() and self.path.stat().st_size >= 24):   # the pcap header: listening
            if self.proc.poll() is not None:
                raise RuntimeError(f"tcpdump failed: {self.proc.stderr.read() if self.proc.stderr else ''}")
            if time.monotonic() > deadline:
                raise RuntimeError("tcpdump did not start in 10 s")
            time.sleep(0.1)
        return self

    def stop(self) -> str:
        """Stop tcpdump (SIGINT: it flushes); its summary ("N packets captured ...")."""
        if self.proc is None or self.proc.poll() is not None:
            return ""
        os.kill(self.proc.pid, signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.strip()

    def __exit__(self, *exc) -> None:
        self.stop()


def forms(value: bytes) -> list[bytes]:
    """``value`` as it could appear on the wire: raw, and HPACK Huffman-coded (its last byte dropped:
    the padding depends on what follows)."""
    from hpack.huffman import HuffmanEncoder
    from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

    coded = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(value)
    return [value, coded[:-1]]


@dataclass
class Found:
    secret: str
    flow: str       # "10.0.0.1:6379 -> 10.0.0.2:41234"
    count: int


@dataclass
class Report:
    packets: int = 0
    tcp_packets: int = 0
    flows: int = 0
    payload_bytes: int = 0
    found: list[Found] = field(default_factory=list)

    @property
    def summary(self) -> str:
        return (f"{self.packets} packets ({self.tcp_packets} TCP, {self.flows} TCP flows, "
                f"{self.payload_bytes / 2**20:.1f} MiB of payload) searched; "
                + (f"secrets found in {len(self.found)} flow(s): " + "; ".join(
                    f"{f.secret} x{f.count} in {f.flow}" for f in self.found) if self.found else "no secret found"))


def _packets(path: Path):
    """(linktype, frame bytes) of each record of a classic pcap file."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24:
            return
        magic = struct.unpack("<I", head[:4])[0]
        endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
        linktype = struct.unpack(endian + "I", head[20:24])[0]
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            _, _, incl, _ = struct.unpack(endian + "IIII", rec)
            data = f.read(incl)
            if len(data) < incl:
                return
            yield linktype, data


def search(path: Path, secrets: dict[str, list[bytes]]) -> Report:
    """Every TCP stream of the pcap at ``path``, reassembled, searched for each byte string of each secret
    (pass ``forms(value)`` for a value that may travel as an HTTP/2 header)."""
    rep = Report()
    segments: dict[tuple, dict[int, bytes]] = defaultdict(dict)
    for linktype, frame in _packets(path):
        rep.packets += 1
        if linktype == 1:                                    # Ethernet (skip VLAN tags)
            off, ethertype = 14, struct.unpack("!H", frame[12:14])[0]
            while ethertype == 0x8100 and len(frame) >= off + 4:
                ethertype, off = struct.unpack("!H", frame[off + 2:off + 4])[0], off + 4
        elif linktype == 113:                                # Linux cooked capture
            off, ethertype = 16, struct.unpack("!H", frame[14:16])[0]
        else:
            continue
        if ethertype != 0x0800 or len(frame) < off + 20:    # IPv4 only (the lab's)
            continue
        ip = frame[off:]
        ihl, proto = (ip[0] & 0x0F) * 4, ip[9]
        total = struct.unpack("!H", ip[2:4])[0]
        if proto != 6:
            continue
        tcp = ip[ihl:total]
        if len(tcp) < 20:
            continue
        rep.tcp_packets += 1
        sport, dport, seq = struct.unpack("!HHI", tcp[:8])
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload:
            key = (".".join(map(str, ip[12:16])), sport, ".".join(map(str, ip[16:20])), dport)
            segments[key].setdefault(seq, payload)           # a retransmission keeps the first copy
    rep.flows = len(segments)
    for (src, sport, dst, dport), segs in segments.items():
        stream = b"".join(segs[s] for s in sorted(segs))   # sequence order (wrap-around ignored: short runs)
        rep.payload_bytes += len(stream)
        for name, values in secrets.items():
            n = sum(stream.count(v) for v in values)
            if n:
                rep.found.append(Found(name, f"{src}:{sport} -> {dst}:{dport}", n))
    return rep

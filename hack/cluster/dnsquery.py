#!/usr/bin/env python3
"""Asks a DNS server for the A records of a name (standard library only).

    dnsquery.py SERVER NAME [--timeout S]

Prints the addresses, one a line; exits 1 if the server did not answer or
answered without an address. Used by up.sh to check that CoreDNS answers.
"""

import argparse
import random
import socket
import struct
import sys


def query(server: str, name: str, timeout: float) -> list[str]:
    qid = random.randrange(1 << 16)
    header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # RD, one question
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    packet = header + qname + struct.pack(">HH", 1, 1)  # A, IN
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, (server, 53))
        data, _ = s.recvfrom(4096)
    rid, flags, qd, an, _, _ = struct.unpack(">HHHHHH", data[:12])
    if rid != qid:
        raise OSError("mismatched DNS id")
    if flags & 0xF:
        raise OSError(f"DNS rcode {flags & 0xF}")
    pos = 12
    for _ in range(qd):  # skip the question
        while data[pos]:
            pos += data[pos] + 1
        pos += 5
    out = []
    for _ in range(an):
        if data[pos] & 0xC0 == 0xC0:
            pos += 2
        else:
            while data[pos]:
                pos += data[pos] + 1
            pos += 1
        rtype, _, _, rdlen = struct.unpack(">HHIH", data[pos : pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            out.append(socket.inet_ntoa(data[pos : pos + 4]))
        pos += rdlen
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("server")
    ap.add_argument("name")
    ap.add_argument("--timeout", type=float, default=2.0)
    a = ap.parse_args()
    try:
        addrs = query(a.server, a.name, a.timeout)
    except OSError as e:
        print(f"dnsquery: {e}", file=sys.stderr)
        return 1
    if not addrs:
        print("dnsquery: no address", file=sys.stderr)
        return 1
    print("\n".join(addrs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

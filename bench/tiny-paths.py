#!/usr/bin/env python3
"""Fill a chroot store with N tiny, real, valid store paths, fast.

    tiny-paths.py STORE_DIR N [TAG]

Each path is what `nix-store --add` of a one-line file would make (a
"source" path named tiny-TAG-i), computed here (NAR hash, store path hash
as Nix does it), written under STORE_DIR/nix/store and registered in one
`nix-store --load-db` call (the format `nix-store --dump-db` writes).
`nix-store --add` in a loop costs ~10 ms a path; this makes 100k in about a
minute. `nix-store --verify --check-contents` accepts the result.
"""
import hashlib, os, struct, subprocess, sys

B32 = "0123456789abcdfghijklmnpqrsvwxyz"

def nix_b32(h):
    out = []
    for n in range((len(h) * 8 - 1) // 5, -1, -1):
        b = n * 5; i = b // 8; j = b % 8
        c = (h[i] >> j) | ((h[i + 1] << (8 - j)) if i + 1 < len(h) else 0)
        out.append(B32[c & 0x1f])
    return "".join(out)

def nstr(s):
    return struct.pack("<Q", len(s)) + s + b"\0" * ((8 - len(s) % 8) % 8)

def nar_file(data):
    return b"".join(nstr(x) for x in [b"nix-archive-1", b"(", b"type", b"regular", b"contents", data, b")"])

def store_path(nar_hex, name):
    s = f"source:sha256:{nar_hex}:/nix/store:{name}".encode()
    h = hashlib.sha256(s).digest()
    c = bytearray(20)
    for i, x in enumerate(h):
        c[i % 20] ^= x
    return f"/nix/store/{nix_b32(bytes(c))}-{name}"

def main():
    root, n = sys.argv[1], int(sys.argv[2])
    tag = sys.argv[3] if len(sys.argv) > 3 else "x"
    os.makedirs(f"{root}/nix/store", exist_ok=True)
    reg = []
    for i in range(n):
        name = f"tiny-{tag}-{i}"
        data = f"{name}\n".encode()
        nar = nar_file(data)
        hx = hashlib.sha256(nar).hexdigest()
        p = store_path(hx, name)
        f = root + p
        with open(f, "wb") as fh:
            fh.write(data)
        os.chmod(f, 0o444)
        os.utime(f, (1, 1))
        reg.append(f"{p}\n{hx}\n{len(nar)}\n\n0\n")
    subprocess.run(["nix-store", "--store", root, "--load-db"], input="".join(reg).encode(), check=True)

if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""What one write and fdatasync costs on this disk, without RocksDB: the floor under a WAL sync.

    scripts/sync-probe.py [DIR] [--count N]

Writes 1,100-byte records (a 1 KiB message and its framing), each followed by fdatasync, into
a new file in DIR (default /var/tmp), three ways: appending (the file grows, so each sync also
commits its new length), overwriting a written file (as into a recycled WAL), and into space
reserved by posix_fallocate. Prints the mean per write; the file is removed.
"""
import argparse
import os
import time


def probe(path, setup, count):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        setup(fd)
        os.lseek(fd, 0, os.SEEK_SET)
        record = b"x" * 1100
        started = time.perf_counter()
        for _ in range(count):
            os.write(fd, record)
            os.fdatasync(fd)
        return (time.perf_counter() - started) / count * 1e3
    finally:
        os.close(fd)
        os.unlink(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default="/var/tmp")
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    size = 1100 * args.count

    def written(fd):
        os.write(fd, b"\0" * size)
        os.fsync(fd)

    def reserved(fd):
        os.posix_fallocate(fd, 0, size)
        os.fsync(fd)

    path = os.path.join(args.dir, f"sync-probe.{os.getpid()}")
    for label, setup in (("appending", lambda fd: None), ("overwriting", written), ("fallocated", reserved)):
        print(f"{label:12} {probe(path, setup, args.count):.3f} ms per write + fdatasync")


if __name__ == "__main__":
    main()

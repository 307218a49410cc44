"""A TCP proxy between the gateway and the broker that can cut the link (the backlog-drain benchmark).

    python -m bench.tcpproxy --listen 127.0.0.1:PORT --target 127.0.0.1:PORT --duration 900

SIGUSR1 cuts: every proxied connection is closed and new ones are closed as soon as they are accepted
(for the gateway, the broker is unreachable); SIGUSR2 restores. The benchmark's subscriber connects to
the broker directly, so it keeps its subscription through the outage and sees every message the
gateway delivers afterwards. Loopback only; exits by itself after `--duration` s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal


class Proxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.cut = False
        self.conns: set[asyncio.StreamWriter] = set()

    async def pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while not self.cut:
                data = await r.read(65536)
                if not data:
                    break
                w.write(data)
                await w.drain()
        w.close()

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if self.cut:
            w.close()
            return
        try:
            tr, tw = await asyncio.open_connection(*self.target)
        except OSError:
            w.close()
            return
        self.conns.update((w, tw))
        await asyncio.gather(self.pipe(r, tw), self.pipe(tr, w))
        self.conns.difference_update((w, tw))

    def set_cut(self, cut: bool) -> None:
        self.cut = cut
        print(f"proxy: {'cut' if cut else 'restored'}", flush=True)
        if cut:
            for w in list(self.conns):
                w.close()


async def run(a: argparse.Namespace) -> None:
    host, port = a.listen.rsplit(":", 1)
    thost, tport = a.target.rsplit(":", 1)
    proxy = Proxy((thost, int(tport)))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, proxy.set_cut, True)
    loop.add_signal_handler(signal.SIGUSR2, proxy.set_cut, False)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(proxy.handle, host, int(port), reuse_address=True)
    print(f"proxy: {a.listen} -> {a.target}", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), a.duration)
    server.close()
    for w in list(proxy.conns):
        w.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--duration", type=float, default=900.0)
    asyncio.run(run(ap.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

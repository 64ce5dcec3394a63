#!/usr/bin/env python3
"""http_range_server.py - a small HTTP(S) file server (or forward proxy) for kiln's
download tests and benchmark. Standard library only; binds 127.0.0.1 by default.

Serves the files under --root with Range (single ranges, suffix ranges), If-Range,
ETag and Last-Modified, HEAD, keep-alive, and sendfile() on the fast path. Options make
it misbehave the ways real servers do:

  --port N / --ready-file F   listen on N (0 = pick a free port); once listening, write
                              the port number to F (atomically)
  --log F                     append one JSON line per request as it arrives:
                              method, path, range, if_range, host, proxy, proxy_auth
  --cut-after N               on the first --cut-times GETs (default 1), send N body bytes
                              then cut the connection
  --ignore-range              answer every GET with 200 and the whole file
  --no-validators             send no ETag / Last-Modified (and ignore If-Range)
  --tls-cert C --tls-key K    serve HTTPS
  --redirect SRC=DST          answer SRC with 302 Location: DST (repeatable)
  --status PATH=CODE          answer PATH with CODE (repeatable), e.g. /broken=500
  --stall-after N             send N body bytes, then send nothing more (until the
                              client goes away)
  --hold-after N --release F  send N body bytes, then wait until file F exists
  --throttle BPS              limit each response body to BPS bytes per second
  --proxy                     be a forward proxy instead (absolute-form GET, CONNECT)
  --proxy-auth USER:PASS      as a proxy, require these Basic credentials (407 otherwise)

Missing files are 404. Everything is logged before it is answered, so a client that has
its response can rely on the log line being there.
"""

import argparse
import base64
import email.utils
import http.client
import http.server
import json
import os
import select
import socket
import ssl
import sys
import threading
import time
import urllib.parse

CHUNK = 256 * 1024
HOP_BY_HOP = {
    "connection", "proxy-connection", "keep-alive", "proxy-authorization",
    "proxy-authenticate", "te", "trailers", "transfer-encoding", "upgrade",
}


class State:
    def __init__(self, opts):
        self.opts = opts
        self.lock = threading.Lock()
        self.cuts_left = opts.cut_times if opts.cut_after is not None else 0
        self.redirects = dict(kv.split("=", 1) for kv in opts.redirect)
        self.statuses = {k: int(v) for k, v in (kv.split("=", 1) for kv in opts.status)}
        self.root = os.path.realpath(opts.root) if opts.root else None

    def log(self, entry):
        if not self.opts.log:
            return
        line = json.dumps(entry) + "\n"
        with self.lock:
            with open(self.opts.log, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()

    def take_cut(self):
        with self.lock:
            if self.cuts_left > 0:
                self.cuts_left -= 1
                return self.opts.cut_after
            return None


def parse_range(value, size):
    """(start, end) inclusive, 'unsat', or None to serve the whole file."""
    if not value.startswith("bytes="):
        return None
    spec = value[len("bytes="):].strip()
    if "," in spec:
        return None
    first, sep, last = spec.partition("-")
    if not sep:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return "unsat"
            start, end = max(0, size - n), size - 1
        else:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None
    if start >= size or start > end:
        return "unsat"
    return start, end


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kiln-range-server/1"

    def log_message(self, fmt, *args):
        pass

    @property
    def state(self):
        return self.server.state

    def record(self, proxy=False):
        self.state.log({
            "t": time.time(),
            "method": self.command,
            "path": self.path,
            "range": self.headers.get("Range"),
            "if_range": self.headers.get("If-Range"),
            "host": self.headers.get("Host"),
            "proxy": proxy,
            "proxy_auth": self.headers.get("Proxy-Authorization") is not None,
        })

    def small(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # ---- file server -------------------------------------------------------------

    def do_GET(self):
        if self.state.opts.proxy:
            return self.proxy_get()
        self.serve(head=False)

    def do_HEAD(self):
        if self.state.opts.proxy:
            self.record(proxy=True)
            return self.small(405, b"HEAD through the proxy is not supported\n")
        self.serve(head=True)

    def translate(self, url_path):
        rel = urllib.parse.unquote(url_path).lstrip("/")
        full = os.path.realpath(os.path.join(self.state.root, rel))
        if full != self.state.root and not full.startswith(self.state.root + os.sep):
            return None
        return full

    def serve(self, head):
        self.record()
        st = self.state
        path = urllib.parse.urlsplit(self.path).path
        if path in st.redirects:
            return self.small(302, b"", [("Location", st.redirects[path])])
        if path in st.statuses:
            code = st.statuses[path]
            return self.small(code, f"forced status {code}\n".encode())
        fs_path = self.translate(path)
        if fs_path is None or not os.path.isfile(fs_path):
            return self.small(404, b"not found\n")
        info = os.stat(fs_path)
        size = info.st_size
        etag = '"%x-%x"' % (size, info.st_mtime_ns)
        last_modified = email.utils.formatdate(info.st_mtime, usegmt=True)
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng and not st.opts.ignore_range:
            parsed = parse_range(rng, size)
            if_range = self.headers.get("If-Range")
            honour = if_range is None or (
                not st.opts.no_validators and if_range in (etag, last_modified))
            if honour and parsed == "unsat":
                return self.small(416, b"", [("Content-Range", f"bytes */{size}")])
            if honour and parsed is not None:
                start, end, status = parsed[0], parsed[1], 206
        length = max(0, end - start + 1)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "none" if st.opts.ignore_range else "bytes")
        if not st.opts.no_validators:
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", last_modified)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head or length == 0:
            return
        self.send_body(fs_path, start, length)

    def send_body(self, fs_path, start, length):
        opts = self.state.opts
        cut = self.state.take_cut()
        plain = (cut is None and opts.stall_after is None and opts.hold_after is None
                 and opts.throttle is None)
        with open(fs_path, "rb") as f:
            if plain:
                self.wfile.flush()
                self.connection.sendfile(f, start, length)
                return
            f.seek(start)
            limit = length if cut is None else min(cut, length)
            sent = 0
            began = time.monotonic()
            while sent < limit:
                if opts.hold_after is not None and sent >= opts.hold_after:
                    self.wait_for_release()
                if opts.stall_after is not None and sent >= opts.stall_after:
                    return self.stall()
                want = min(CHUNK, limit - sent)
                for edge in (opts.hold_after, opts.stall_after):
                    if edge is not None and sent < edge:
                        want = min(want, edge - sent)
                data = f.read(want)
                if not data:
                    break
                self.wfile.write(data)
                sent += len(data)
                if opts.throttle:
                    ahead = sent / opts.throttle - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
            if cut is not None:
                self.cut()

    def wait_for_release(self):
        deadline = time.monotonic() + 600
        while not os.path.exists(self.state.opts.release) and time.monotonic() < deadline:
            time.sleep(0.02)

    def stall(self):
        # Hold the connection open, sending nothing, until the client gives up.
        self.close_connection = True
        deadline = time.monotonic() + 600
        conn = self.connection
        while time.monotonic() < deadline:
            readable, _, _ = select.select([conn], [], [], 1.0)
            if readable:
                try:
                    if not conn.recv(1024):
                        return
                except OSError:
                    return

    def cut(self):
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ---- forward proxy -----------------------------------------------------------

    def proxy_authorized(self):
        want = self.state.opts.proxy_auth
        if not want:
            return True
        token = "Basic " + base64.b64encode(want.encode()).decode()
        if self.headers.get("Proxy-Authorization") == token:
            return True
        self.close_connection = True
        self.small(407, b"proxy authentication required\n",
                   [("Proxy-Authenticate", 'Basic realm="kiln-test"')])
        return False

    def proxy_get(self):
        self.record(proxy=True)
        if not self.proxy_authorized():
            return
        target = urllib.parse.urlsplit(self.path)
        if target.scheme != "http" or not target.hostname:
            return self.small(400, b"absolute http:// URL expected\n")
        upstream = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=60)
        path = target.path or "/"
        if target.query:
            path += "?" + target.query
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            upstream.request("GET", path, headers=headers)
            resp = upstream.getresponse()
        except OSError as e:
            return self.small(502, f"upstream failed: {e}\n".encode())
        self.send_response(resp.status, resp.reason)
        has_length = False
        for k, v in resp.getheaders():
            if k.lower() in HOP_BY_HOP:
                continue
            has_length |= k.lower() == "content-length"
            self.send_header(k, v)
        if not has_length:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        while True:
            data = resp.read(CHUNK)
            if not data:
                break
            self.wfile.write(data)
        upstream.close()

    def do_CONNECT(self):
        self.record(proxy=True)
        if not self.state.opts.proxy:
            return self.small(405, b"not a proxy\n")
        if not self.proxy_authorized():
            return
        host, _, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=60)
        except (OSError, ValueError) as e:
            return self.small(502, f"cannot reach {self.path}: {e}\n".encode())
        self.send_response(200, "Connection Established")
        self.end_headers()
        self.close_connection = True
        client = self.connection
        pair = {client: upstream, upstream: client}
        try:
            while True:
                readable, _, _ = select.select(list(pair), [], [], 120)
                if not readable:
                    break
                for s in readable:
                    data = s.recv(CHUNK)
                    if not data:
                        return
                    pair[s].sendall(data)
        except OSError:
            pass
        finally:
            upstream.close()


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    tls = None
    state = None

    def finish_request(self, request, client_address):
        # The TLS handshake runs in the connection's thread, so a client that never
        # completes one cannot block the accept loop.
        if self.tls is not None:
            try:
                request.settimeout(60)
                request = self.tls.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (ssl.SSLError, OSError):
                return
        self.RequestHandlerClass(request, client_address, self)

    def handle_error(self, request, client_address):
        # Clients that go away mid-response are expected here.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ready-file")
    p.add_argument("--log")
    p.add_argument("--cut-after", type=int)
    p.add_argument("--cut-times", type=int, default=1)
    p.add_argument("--ignore-range", action="store_true")
    p.add_argument("--no-validators", action="store_true")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--redirect", action="append", default=[])
    p.add_argument("--status", action="append", default=[])
    p.add_argument("--stall-after", type=int)
    p.add_argument("--hold-after", type=int)
    p.add_argument("--release")
    p.add_argument("--throttle", type=int)
    p.add_argument("--proxy", action="store_true")
    p.add_argument("--proxy-auth")
    opts = p.parse_args()
    if not opts.proxy and not opts.root:
        p.error("--root is required unless --proxy")
    if opts.hold_after is not None and not opts.release:
        p.error("--hold-after needs --release FILE")
    if bool(opts.tls_cert) != bool(opts.tls_key):
        p.error("--tls-cert and --tls-key go together")

    server = Server((opts.bind, opts.port), Handler)
    server.state = State(opts)
    if opts.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(opts.tls_cert, opts.tls_key)
        server.tls = ctx
    port = server.server_address[1]
    if opts.ready_file:
        tmp = opts.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, opts.ready_file)
    else:
        print(f"listening on {opts.bind}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

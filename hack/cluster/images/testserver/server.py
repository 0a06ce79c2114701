"""A tiny HTTP server for the cluster smoke test (standard library only).

GET  /            -> "ok <hostname>"
GET  /file        -> contents of $DATA_DIR/data (404 if absent)
PUT  /file        -> writes the request body to $DATA_DIR/data
GET  /resolve?name=N -> the addresses N resolves to (exercises cluster DNS)
GET  /fetch?url=U -> fetches U and returns its body (pod-to-service traffic)
"""

import http.server
import os
import signal
import socket
import sys
import urllib.parse
import urllib.request

DATA_DIR = os.environ.get("DATA_DIR", "/data")
PORT = int(os.environ.get("PORT", "8080"))


class Handler(http.server.BaseHTTPRequestHandler):
    def _send(self, code, body):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/":
            self._send(200, f"ok {socket.gethostname()}\n")
        elif url.path == "/file":
            try:
                with open(os.path.join(DATA_DIR, "data"), "rb") as f:
                    self._send(200, f.read())
            except FileNotFoundError:
                self._send(404, "no data\n")
        elif url.path == "/resolve":
            try:
                infos = socket.getaddrinfo(query["name"][0], None, proto=socket.IPPROTO_TCP)
                self._send(200, "\n".join(sorted({i[4][0] for i in infos})) + "\n")
            except (KeyError, OSError) as e:
                self._send(502, f"resolve failed: {e}\n")
        elif url.path == "/fetch":
            try:
                with urllib.request.urlopen(query["url"][0], timeout=5) as r:
                    self._send(200, r.read())
            except (KeyError, OSError) as e:
                self._send(502, f"fetch failed: {e}\n")
        else:
            self._send(404, "not found\n")

    def do_PUT(self):
        if urllib.parse.urlsplit(self.path).path != "/file":
            self._send(404, "not found\n")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        os.makedirs(DATA_DIR, exist_ok=True)
        tmp = os.path.join(DATA_DIR, ".data.tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(DATA_DIR, "data"))
        self._send(200, "written\n")

    def log_message(self, fmt, *args):
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")


if __name__ == "__main__":
    # As PID 1 in its container, Python gets no default SIGTERM action: exit on it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    http.server.ThreadingHTTPServer(("", PORT), Handler).serve_forever()

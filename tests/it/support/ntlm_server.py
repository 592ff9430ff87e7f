#!/usr/bin/python3
"""An NTLM-authenticating reverse proxy for the tests, in front of Apache's /dav/.

It plays IIS with "Windows authentication": it offers `Negotiate` and `NTLM`, authenticates
each TCP connection with the NTLM handshake (CHALLENGE with a timestamp and target info),
checks the client's NTLMv2 response with an implementation independent of davdrive's (the
`ntlm_auth` package computes NTOWFv2; the HMAC is Python's), and then forwards every request
of that connection to the upstream server. Requests on an unauthenticated connection get 401.

Usage: ntlm_server.py LISTEN_PORT UPSTREAM_PORT DOMAIN USER PASSWORD LOG_FILE [CERT KEY]
With CERT and KEY (PEM) it speaks HTTPS, as IIS does. Prints "ready" once listening. Each authentication is logged as "verified USER DOMAIN" or
"refused ...", each forwarded request as "request METHOD PATH".
"""
import base64
import hmac
import http.client
import os
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ntlm_auth.compute_hash import _ntowfv2

LISTEN, UPSTREAM = int(sys.argv[1]), int(sys.argv[2])
DOMAIN, USER, PASSWORD, LOG = sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
LOCK = threading.Lock()


def log(line):
    with LOCK:
        with open(LOG, "a") as f:
            f.write(line + "\n")


def u16(s):
    return s.encode("utf-16-le")


def av(kind, value):
    return struct.pack("<HH", kind, len(value)) + value


def challenge_message(server_challenge):
    name = u16(DOMAIN)
    filetime = struct.pack("<Q", int(time.time() * 10_000_000) + 116444736000000000)
    info = (av(2, u16(DOMAIN)) + av(1, u16("SERVER")) + av(4, u16("corp.example"))
            + av(3, u16("server.corp.example")) + av(7, filetime) + av(0, b""))
    flags = 0xE28A8235
    head = 56
    msg = b"NTLMSSP\0" + struct.pack("<I", 2)
    msg += struct.pack("<HHI", len(name), len(name), head)
    msg += struct.pack("<I", flags) + server_challenge + b"\0" * 8
    msg += struct.pack("<HHI", len(info), len(info), head + len(name))
    msg += bytes([10, 0, 0x61, 0x4a, 0, 0, 0, 15])
    return msg + name + info, info


def field(msg, at):
    length, _, offset = struct.unpack("<HHI", msg[at:at + 8])
    return msg[offset:offset + length]


def verify(msg, server_challenge, info):
    """Checks an AUTHENTICATE message; returns (ok, reason)."""
    if msg[:8] != b"NTLMSSP\0" or struct.unpack("<I", msg[8:12])[0] != 3:
        return False, "not an AUTHENTICATE message"
    nt = field(msg, 20)
    domain = field(msg, 28).decode("utf-16-le")
    user = field(msg, 36).decode("utf-16-le")
    if user.lower() != USER.lower() or domain.lower() != DOMAIN.lower():
        return False, f"unknown user {domain}\\{user}"
    if len(nt) < 16 + 28:
        return False, "no NTLMv2 response"
    proof, blob = nt[:16], nt[16:]
    if blob[:2] != b"\x01\x01":
        return False, "not an NTLMv2 blob"
    if info[:-4] not in blob:
        return False, "the target info was not echoed"
    key = _ntowfv2(user, PASSWORD, domain)
    want = hmac.new(key, server_challenge + blob, "md5").digest()
    if not hmac.compare_digest(want, proof):
        return False, "wrong NTProofStr (password)"
    if field(msg, 12) != b"\0" * 24:
        return False, "LM response must be zeros when the server sent a timestamp"
    return True, f"{user} {domain}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.authenticated = False
        self.server_challenge = None
        self.info = None

    def log_message(self, *args):
        pass

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def reply(self, status, headers=(), body=b""):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self):
        body = self.read_body()
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if (not self.authenticated and self.command == "OPTIONS"
                and os.environ.get("NTLM_ANONYMOUS_OPTIONS")):
            # Like servers that answer OPTIONS without authentication, whatever it carries.
            self.forward(body)
            return
        if not self.authenticated:
            if scheme in ("NTLM", "Negotiate") and token:
                msg = base64.b64decode(token)
                kind = struct.unpack("<I", msg[8:12])[0] if len(msg) >= 12 else 0
                if kind == 1:
                    self.server_challenge = os.urandom(8)
                    challenge, self.info = challenge_message(self.server_challenge)
                    log(f"negotiate {scheme}")
                    self.reply(401, [("WWW-Authenticate",
                                      f"{scheme} {base64.b64encode(challenge).decode()}")])
                    return
                if kind == 3 and self.server_challenge:
                    ok, why = verify(msg, self.server_challenge, self.info)
                    self.server_challenge = None
                    if not ok:
                        log(f"refused {why}")
                        self.reply(401, [("WWW-Authenticate", "Negotiate"),
                                         ("WWW-Authenticate", "NTLM")])
                        return
                    log(f"verified {why}")
                    self.authenticated = True
                else:
                    # An AUTHENTICATE without a challenge on this connection (or any other
                    # token): the handshake did not stay on one connection.
                    log(f"refused unexpected message type {kind} on this connection")
                    self.reply(401, [("WWW-Authenticate", "Negotiate"),
                                     ("WWW-Authenticate", "NTLM")])
                    return
            else:
                if auth:
                    log(f"refused scheme {scheme}")
                self.reply(401, [("WWW-Authenticate", "Negotiate"),
                                 ("WWW-Authenticate", "NTLM")])
                return
        self.forward(body)

    def forward(self, body):
        log(f"request {self.command} {self.path}")
        up = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=60)
        skip = {"authorization", "connection", "transfer-encoding", "content-length",
                "keep-alive"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        up.request(self.command, self.path, body=body, headers=headers)
        resp = up.getresponse()
        data = resp.read()
        up.close()
        headers = [(k, v) for k, v in resp.getheaders()
                   if k.lower() not in skip]
        self.reply(resp.status, headers, data)


for m in ["GET", "HEAD", "PUT", "PROPFIND", "PROPPATCH", "OPTIONS", "DELETE", "MKCOL",
          "MOVE", "COPY", "LOCK", "UNLOCK"]:
    setattr(Handler, "do_" + m, Handler.handle_any)

server = ThreadingHTTPServer(("127.0.0.1", LISTEN), Handler)
server.daemon_threads = True
if len(sys.argv) > 8:
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[7], sys.argv[8])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()

"""A client run inside a test's network namespace that dials an address itself, bypassing any
sidecar: `python -c SCRIPT HOST PORT CERT KEY CA` ("-" for none: plaintext, or TLS without a
client certificate). Sends one GET /direct and prints the status line and the last line of
the answer ("HTTP/1.1 200 OK | <body's last line>"), or "refused <error>" when the
connection or handshake fails, or "refused closed" when nothing came back."""

SCRIPT = """
import socket, ssl, sys
host, port, cert, key, ca = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
try:
    s = socket.create_connection((host, port), timeout=5)
    if ca != "-":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(ca)
        if cert != "-":
            ctx.load_cert_chain(cert, key)
        s = ctx.wrap_socket(s)
    s.sendall(b"GET /direct HTTP/1.1\\r\\nhost: b\\r\\nconnection: close\\r\\n\\r\\n")
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
except (OSError, ssl.SSLError) as e:
    print("refused", type(e).__name__)
    sys.exit(0)
lines = got.decode(errors="replace").splitlines()
print(lines[0] if lines else "refused closed", "|", lines[-1] if lines else "")
"""

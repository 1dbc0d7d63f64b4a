"""The backend of tests/containers.sh: plain HTTP on 127.0.0.1:8080 only.

GET /      a page naming the token given as argv[1]
GET /slow  6 lines of 1000 bytes, 0.5 s apart, then "END" (a stream that
           is still in flight when the test stops upseal-server)
Logs one line per request to stderr, so the test can count them.
"""

import http.server
import sys
import time

TOKEN = sys.argv[1]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        sys.stderr.write("app: request %s\n" % self.path)
        sys.stderr.flush()
        if self.path == "/slow":
            line = b"x" * 1000 + b"\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(6 * len(line) + 4))
            self.end_headers()
            for i in range(6):
                self.wfile.write(line)
                self.wfile.flush()
                if i == 0:
                    sys.stderr.write("app: slow stream started\n")
                    sys.stderr.flush()
                time.sleep(0.5)
            self.wfile.write(b"END\n")
            return
        body = ("<h1>hello from the app %s</h1>\n" % TOKEN).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 8080), Handler)
sys.stderr.write("app: listening on 127.0.0.1:8080\n")
sys.stderr.flush()
srv.serve_forever()
